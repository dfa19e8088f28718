"""DeepSpeed ZeRO-3 across two CPU processes (gloo): sharding, equivalence with one process, resume.

The two-process runs start `python -m torch.distributed.run --nproc_per_node 2` on the tiny
random Llama with DS_ACCELERATOR=cpu; a step of the 2-rank run holds the same 4 prompts as a
step of the 1-rank run (2 ranks x 2 micro-batches x 1 prompt against 1 rank x 4), so both must
sample the same completions and take the same optimizer step.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from grpo.runtime import checkpoint
from grpo.runtime.config import ConfigError, load_config
from grpo.runtime.distributed import World, check_recipe, rank_share, resolve_ds_config
from tests.test_train import adapter_weights, tiny_args

REPO = Path(__file__).resolve().parents[1]
# A micro-batch is one prompt (batch_size = group_size = 4); a step is 4 prompts in all, whatever
# the number of processes (1 process: 4 micro-batches; 2 ranks: 2 each).
ONE_PROMPT_PER_MICRO_BATCH = ["train.batch_size=4", "train.global_batch_prompts=4", "data.limit_eval=2",
                              "train.learning_rate=1e-3"]
ENV = {"PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
       "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "grpo" / "torch_extensions")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(procs: list[subprocess.Popen], what: str, timeout: float = 240) -> list[str]:
    """Wait for launcher processes (each in its own session, so a timeout kills its workers too); their
    stdout and stderr, one string each."""
    deadline = time.monotonic() + timeout
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"{what} took over {timeout} s: " + proc.communicate()[1][-3000:])
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return [stdout + stderr for stdout, stderr in outputs]


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_two_ranks(model_dir, out_dir, steps, *extra) -> str:
    """The launcher's output (both ranks' logs). ZeRO-3 unless `extra` names another train.strategy."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "tests.helpers.zero3_run",
               *tiny_args(model_dir, out_dir, steps, *ONE_PROMPT_PER_MICRO_BATCH, "train.strategy=zero3", *extra)]
    return finish([start(command)], "two-rank run")[0]


def run_two_nodes(model_dir, node_dirs, steps, *extra):
    """Two "nodes" of one process each, each writing to its own output folder (node-local disks)."""
    port = free_port()
    procs = [start([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                    "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                    "-m", "tests.helpers.zero3_run",
                    *tiny_args(model_dir, out_dir, steps, *ONE_PROMPT_PER_MICRO_BATCH, "train.strategy=zero3", *extra)])
             for node, out_dir in enumerate(node_dirs)]
    finish(procs, "two-node run")


DYNAMIC = ("rollout.dynamic_sampling=true", "train.seed=2", "log.eval_before=false",
           "rewards=[{name: has_letter_e, weight: 1.0}]")  # a rare reward: most groups have no spread


@pytest.mark.parametrize("strategy", ["zero3", "ddp"])
def test_dynamic_sampling_on_two_ranks_matches_one_process(tiny_model_dir, tmp_path, strategy):
    """DAPO's filter across ranks: the same rounds, the same kept groups (a short batch: 3 of the 4 prompts
    after 4 rounds, so the ranks hold unequal shares and pad), the same adapter after the step."""
    two, one = tmp_path / "two", tmp_path / "one"
    run_two_ranks(tiny_model_dir, two, 1, f"train.strategy={strategy}", *DYNAMIC)
    train.main(tiny_args(tiny_model_dir, one, 1, *ONE_PROMPT_PER_MICRO_BATCH, *DYNAMIC))
    (a,), (b,) = step_records(one), step_records(two)
    assert (a["dynamic_sampling/tries"], a["dynamic_sampling/groups"]) == (4, 3)
    assert (b["dynamic_sampling/tries"], b["dynamic_sampling/groups"]) == (4, 3)
    for key in ("reward/total/mean", "reward/total/std", "completion/length_mean", "loss"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    wa, wb = adapter_weights(one), adapter_weights(two)
    moved = max(wa[k].abs().max().item() for k in wa if "lora_B" in k)
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert moved > 5e-4 and worst < 1e-5, (moved, worst)


AGENTS = ("data.task=ecom", "data.limit_eval=2", "env.curriculum=true", "rewards=[]", "rollout.max_new_tokens=24",
          "log.eval_before=false")


@pytest.mark.parametrize("strategy", ["zero3", "ddp"])
def test_an_agent_step_on_two_ranks_matches_one_process(tiny_model_dir, tmp_path, strategy):
    """The e-commerce gym's episodes (environments per row, seeded) on two ranks: the same rewards, curriculum
    and adapter as one process."""
    two, one = tmp_path / "two", tmp_path / "one"
    run_two_ranks(tiny_model_dir, two, 1, f"train.strategy={strategy}", *AGENTS)
    train.main(tiny_args(tiny_model_dir, one, 1, *ONE_PROMPT_PER_MICRO_BATCH, *AGENTS))
    (a,), (b,) = step_records(one), step_records(two)
    for key in [k for k in a if k.startswith(("reward/", "curriculum/", "env/")) or k == "completion/length_mean"]:
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    wa, wb = adapter_weights(one), adapter_weights(two)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def merge_as_s3_would(roots, merged):
    """The union of the nodes' folders, file by file (a later node's file replaces an earlier one's)."""
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                target = Path(merged) / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def step_records(out_dir):
    return [json.loads(x) for x in (Path(out_dir) / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def eval_row_keys(out_dir):
    records = map(json.loads, (Path(out_dir) / "eval_rows.jsonl").read_text().splitlines())
    return [(r["step"], r["tag"], r["row"]) for r in records]


@pytest.fixture(scope="module")
def two_rank_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3") / "run"
    output = run_two_ranks(tiny_model_dir, out, 2)
    (out / "launcher.log").write_text(output)
    return out


def test_the_zero3_start_up_line_counts_the_whole_adapter(two_rank_run):
    """LoRA r=4 on q, k, v, o, gate, up, down of the tiny Llama (hidden 32, kv 16, MLP 64), 2 layers:
    per layer q 4x32+32x4 = 256, k and v 4x32+16x4 = 192 each, o 256, gate and up 4x32+64x4 = 384 each,
    down 4x64+32x4 = 384: 2048, so 4096 in all; not the 0 the empty partitions would give."""
    import re

    line = re.search(r"trainable parameters: (\d+) of (\d+)", (two_rank_run / "launcher.log").read_text())
    assert line is not None
    trainable, every = map(int, line.groups())
    assert trainable == 4096 and every > trainable


def test_two_ranks_train_and_each_holds_half_of_the_parameters(two_rank_run):
    assert [r["step"] for r in step_records(two_rank_run)] == [1, 2]
    shards = [json.loads((two_rank_run / "shards" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    full = shards[0]["full_numel"]
    for shard in shards:
        # ZeRO-3 pads each parameter to a multiple of the rank count: at most 1 element each
        assert abs(shard["rank_numel"] - full / 2) <= 200
        assert abs(shard["rank_bytes"] - shards[0]["full_bytes"] / 2) <= 800
    written = sorted(p.name for p in (two_rank_run / "checkpoints" / "step-000002").iterdir())
    assert written == ["adapter", "trainer_state.pt"]  # nothing per rank: the optimizer state is gathered
    lora_b = {k: v for k, v in adapter_weights(two_rank_run).items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # full weights, not empty shards


@pytest.fixture(scope="module")
def one_process_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    train.main(tiny_args(tiny_model_dir, out, 2, *ONE_PROMPT_PER_MICRO_BATCH))
    return out


def first_step_only(run: Path, copy: Path) -> Path:
    """A copy of a 2-step run as it was after step 1 (step 2's checkpoint and the final adapter gone)."""
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step-000002")
    shutil.rmtree(copy / "final")
    return copy


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst


@pytest.mark.parametrize("strategy", ["zero3", "ddp", "auto"])
def test_one_step_on_two_ranks_matches_one_step_on_one_process(tiny_model_dir, tmp_path, strategy):
    two, one = tmp_path / "two", tmp_path / "one"
    output = run_two_ranks(tiny_model_dir, two, 1, f"train.strategy={strategy}")
    if strategy == "auto":  # the tiny base fits anywhere: replicated, and the choice is logged with its reason
        assert "train.strategy=auto: ddp, as the frozen base" in output
    train.main(tiny_args(tiny_model_dir, one, 1, *ONE_PROMPT_PER_MICRO_BATCH))
    (a,), (b,) = step_records(one), step_records(two)
    assert a["reward/total/mean"] == b["reward/total/mean"]  # the same completions were sampled
    assert a["completion/length_mean"] == b["completion/length_mean"]
    # the two ranks' shares of the held-out rows are gathered back in row order
    assert eval_row_keys(two) == eval_row_keys(one) == [(0, "before", 0), (0, "before", 1), (1, "after", 0),
                                                        (1, "after", 1)]
    wa, wb = adapter_weights(one), adapter_weights(two)
    assert wa.keys() == wb.keys()
    moved = max(wa[k].abs().max().item() for k in wa if "lora_B" in k)  # B starts at 0: this is the step
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    # float sums in another order (2 partitions, reduce-scatter): measured 1.7e-6 at lr 1e-3
    assert moved > 5e-4 and worst < 1e-5, (moved, worst)


@pytest.mark.parametrize("strategy", ["zero3", "ddp"])
def test_on_policy_distillation_on_two_ranks_matches_one_process(tiny_model_dir, tiny_teacher_adapter, tmp_path,
                                                                 strategy):
    """The teacher is a whole copy on each rank (loaded outside ZeRO-3's partitioning): the same step."""
    opd = ["objective.name=opd", f"objective.teacher_adapter={tiny_teacher_adapter}", "loss.beta=0",
           "objective.horizon=truncated", "objective.horizon_fraction=0.5", "log.eval_before=false"]
    two, one = tmp_path / "two", tmp_path / "one"
    run_two_ranks(tiny_model_dir, two, 1, f"train.strategy={strategy}", *opd)
    train.main(tiny_args(tiny_model_dir, one, 1, *ONE_PROMPT_PER_MICRO_BATCH, *opd))
    (a,), (b,) = step_records(one), step_records(two)
    assert a["completion/length_max"] == b["completion/length_max"] <= 4  # half of the 8-token horizon
    assert a["reward/total/mean"] == b["reward/total/mean"]  # the same completions were sampled
    wa, wb = adapter_weights(one), adapter_weights(two)
    moved = max(wa[k].abs().max().item() for k in wa if "lora_B" in k)
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    # Adam's first step is lr*g/(|g|+eps): the small reverse-KL gradients of coordinates near eps
    # magnify float-order differences (measured 1.1e-5, 1% of a step at lr 1e-3, under zero3)
    assert moved > 5e-4 and worst < 5e-5, (moved, worst)


def test_distil_trains_on_two_ranks_under_zero3(tiny_model_dir, tmp_path):
    run_two_ranks(tiny_model_dir, tmp_path, 1, "objective.name=distil", "objective.top_k=8", "log.eval_before=false")
    (record,) = step_records(tmp_path)
    assert record["distil/cross_entropy"] > 0 and record["skipped"] == 0


def test_two_ranks_resume_to_the_same_weights(tiny_model_dir, two_rank_run, tmp_path):
    resumed = first_step_only(two_rank_run, tmp_path / "resumed")
    run_two_ranks(tiny_model_dir, resumed, 2)  # resumes from step-000001
    assert_same_weights(adapter_weights(two_rank_run), adapter_weights(resumed), atol=0)
    assert [r["step"] for r in step_records(resumed)] == [1, 2]


def test_a_two_rank_checkpoint_resumes_on_one_process(tiny_model_dir, two_rank_run, one_process_run, tmp_path):
    resumed = first_step_only(two_rank_run, tmp_path / "resumed")
    train.main(tiny_args(tiny_model_dir, resumed, 2, *ONE_PROMPT_PER_MICRO_BATCH))  # 1 process, from step 1
    assert [r["step"] for r in step_records(resumed)] == [1, 2]
    # Step 2 on one process after step 1 on two ranks: the 2-rank run's weights, and the 1-process
    # run's, up to the float order of the sums (as the equivalence test above).
    assert_same_weights(adapter_weights(two_rank_run), adapter_weights(resumed), atol=1e-5)
    assert_same_weights(adapter_weights(one_process_run), adapter_weights(resumed), atol=1e-5)


@pytest.mark.parametrize("strategy", ["zero3", "ddp"])
def test_a_one_process_checkpoint_resumes_on_two_ranks(tiny_model_dir, one_process_run, tmp_path, strategy):
    resumed = first_step_only(one_process_run, tmp_path / "resumed")
    run_two_ranks(tiny_model_dir, resumed, 2, f"train.strategy={strategy}")
    assert [r["step"] for r in step_records(resumed)] == [1, 2]
    assert_same_weights(adapter_weights(one_process_run), adapter_weights(resumed), atol=1e-5)


@pytest.mark.parametrize("strategy", ["zero3", "ddp"])
def test_qlora_trains_on_two_ranks(tiny_model_dir_128, tmp_path, strategy):
    # The published recipe's model settings: NF4 base weights stored in bfloat16, bfloat16 compute.
    run_two_ranks(tiny_model_dir_128, tmp_path, 1, f"train.strategy={strategy}", "model.load_in_4bit=true",
                  "model.dtype=bfloat16")
    assert [r["step"] for r in step_records(tmp_path)] == [1]
    lora_b = {k: v for k, v in adapter_weights(tmp_path).items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())  # the optimizer stepped
    assert checkpoint.list_checkpoints(tmp_path)


def test_two_nodes_on_node_local_disks_merge_into_a_checkpoint_that_resumes_exactly(tiny_model_dir, tmp_path):
    # SageMaker: each instance writes /opt/ml/checkpoints on its own disk; S3 holds the union of the
    # instances' files; a restarted job gets that union on every instance.
    straight = [tmp_path / "straight-node0", tmp_path / "straight-node1"]
    run_two_nodes(tiny_model_dir, straight, 2)
    merged = tmp_path / "s3"
    merge_as_s3_would(straight, merged)
    assert [step for step, _ in checkpoint.list_checkpoints(merged)] == [1, 2]
    first = first_step_only(merged, tmp_path / "s3-after-step-1")
    restored = [tmp_path / "restored-node0", tmp_path / "restored-node1"]
    for root in restored:
        shutil.copytree(first, root)
    run_two_nodes(tiny_model_dir, restored, 2)  # both nodes resume from step 1
    assert_same_weights(adapter_weights(straight[0]), adapter_weights(restored[0]), atol=0)
    assert [r["step"] for r in step_records(restored[0])] == [1, 2]


def recipe(*overrides):
    return load_config(None, ["train.batch_size=8", "rollout.group_size=4", "train.grad_accum_steps=2", "model.dtype=float32",
                              *overrides])


@pytest.mark.parametrize("override, named", [
    ("model.use_lora=false", "use_lora"), ("log.merge_final=true", "merge_final"),
], ids=["full-finetune", "merge-final"])
def test_zero3_refuses_what_it_cannot_honour_naming_the_setting(override, named):
    check_recipe(recipe())  # the defaults pass
    check_recipe(recipe("model.load_in_4bit=true"))  # QLoRA runs under ZeRO-3
    with pytest.raises(ConfigError, match=named):
        check_recipe(recipe(override))


def test_dynamic_sampling_runs_on_many_ranks_and_ddp_refuses_nothing_zero3_refuses():
    check_recipe(recipe("rollout.dynamic_sampling=true"))  # DAPO's filter on several ranks, under zero3 too
    for allowed in ("model.use_lora=false", "log.merge_final=true", "model.load_in_4bit=true",
                    "rollout.dynamic_sampling=true"):
        check_recipe(recipe(allowed), "ddp")


def test_ds_config_auto_fields_come_from_the_recipe():
    raw = json.loads((REPO / "ds_config.json").read_text())
    ds = resolve_ds_config(raw, recipe("model.dtype=bfloat16", "train.max_grad_norm=0.5"), 4, 64, "ds_config.json")
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (8, 2, 64)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 640
    assert raw["train_batch_size"] == "auto"  # the input is not modified


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param({"train_batch_size": 32}, r"train_batch_size=32 contradicts the recipe \(train.batch_size x "
                                                r"train.grad_accum_steps / train.mini_batches x 4 ranks gives 64\)",
                     id="batch-size-mismatch"),
        pytest.param({"bf16": {"enabled": True}}, r"bf16.enabled=True contradicts the recipe \(model.dtype=float32",
                     id="bf16-on-float32"),
        pytest.param({"zero_optimization": {"stage": 2}}, "ZeRO stage 3 only", id="zero-stage-2"),
        pytest.param({"optimizer": {"type": "Adam"}}, "remove the 'optimizer' section", id="optimizer-section"),
    ],
)
def test_a_ds_config_value_that_contradicts_the_recipe_is_an_error(change, message):
    raw = {**json.loads((REPO / "ds_config.json").read_text()), **change}
    with pytest.raises(ConfigError, match=message):
        resolve_ds_config(raw, recipe(), 4, 64, "ds_config.json")


@pytest.mark.parametrize("count, size, shares", [(4, 2, [[0, 1], [2, 3]]), (5, 2, [[0, 1, 2], [3, 4]]),
                                                  (1, 2, [[0], []])],
                         ids=["even-split", "remainder-to-first-rank", "fewer-items-than-ranks"])
def test_rank_share_splits_contiguously(count, size, shares):
    assert [list(rank_share(count, World(rank, size))) for rank in range(size)] == shares
