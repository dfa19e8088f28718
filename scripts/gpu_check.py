"""The GPU check: one command showing what this project does on a GPU machine, in under 8 minutes.

    python scripts/gpu_check.py                               # on the GPU machine
    python scripts/gpu_check.py --model /path/to/Qwen2.5-0.5B # the rollout rows on real weights
    python scripts/gpu_check.py --cpu                         # the same flow on CPU, small sizes

Sized for one H100 with torch, transformers, peft, accelerate and numpy and nothing else: no
network, no deepspeed, bitsandbytes or flash-attn. It runs the repository from its folder (no
install) and downloads nothing: the few pure-Python wheels the machine lacks (pytest and its
dependencies; math-verify, which the reward registry imports) come in .whl/gpu-check, made by
scripts/gpu_wheels.sh where pip has an index, and are unpacked onto the path, never installed.
Optional packages are imported only to report whether they are there. Rows:

1. imports: the packages, and train.py's import of the whole package.
2. pytest -m cuda: the CUDA-marked tests (tests that skip are listed as not run, with why).
3. rollout alone on a randomly initialised model of Qwen2.5-0.5B's architecture (config written
   here) with the published recipe's LoRA, bfloat16: a ~900-token prompt shared by groups of 8,
   256 new tokens, EOS ignored, at 32 and 512 rows, eager and compiled (rollout.compile), each
   with the compile time, the graphs compiled during the timed run (recompiles), CUDA-graph
   skips and peak memory; the target: >= 15,000 generated tokens/s at 512 rows, compiled.
4. the sampler's log-probs of its tokens against the trainer's (completion_logprobs).
5. training: 3 steps of train.py on a tiny random model, killed after step 2's checkpoint and
   resumed, against 3 uninterrupted steps (the adapters must agree).
6. what needs two GPUs, deepspeed, bitsandbytes or flash-attn: run where present, else not run.

Each row is ok, FAIL or not run (never ok for what did not run). The table goes to stdout and
OUT/gpu_check.json, every command's output to OUT/gpu_check.log; the exit status is 1 when a
row failed, 2 when there is no GPU and --cpu was not given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl" / "gpu-check"
PYTHON = sys.executable
TARGET_TOKENS_PER_S = 15_000  # rollout alone, 512 rows, the 0.5B shape, compiled, one H100
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the published recipe's
STOP_STRINGS = ("\nQuestion:",)  # the published recipe's: the stop matcher runs every step
GROUP = 8


@dataclass(frozen=True)
class Shape:
    """A Qwen2 architecture; GPU is Qwen2.5-0.5B's (its config.json), CPU a small one for --cpu."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    rope_theta: float = 1e6


QWEN25_05B = Shape(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936)
SMALL = Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024)


@dataclass
class Row:
    check: str
    status: str  # ok | FAIL | not run
    result: str = ""
    note: str = ""


def ok(check, result="", note="") -> Row:
    return Row(check, "ok", result, note)


def fail(check, result="", note="") -> Row:
    return Row(check, "FAIL", result, note)


def not_run(check, why) -> Row:
    return Row(check, "not run", "", why)


# ---- the machine: wheels, imports, optional packages ---------------------------------------------

def unpack_wheels(folder: Path, target: Path) -> list[str]:
    """Unzip each wheel in `folder` into `target` (pure-Python wheels run from there); returns their names."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    return [w.name for w in wheels]


def import_rows(cuda: bool) -> list[Row]:
    import importlib

    rows = []
    for name in ("torch", "transformers", "peft", "accelerate", "numpy", "yaml", "pytest", "math_verify"):
        try:
            module = importlib.import_module(name)
            rows.append(ok(f"import {name}", getattr(module, "__version__", "")))
        except ImportError as error:
            rows.append(fail(f"import {name}", str(error),
                             f"bring its wheel: scripts/gpu_wheels.sh writes {WHEELS.relative_to(REPO)}"))
    try:
        importlib.import_module("train")
        rows.append(ok("import train", "train.py and the package import"))
    except Exception as error:  # noqa: BLE001 - any import failure is this row's result
        rows.append(fail("import train", f"{type(error).__name__}: {error}"))
    import torch

    if cuda:
        rows.append(ok("CUDA", f"{torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s), "
                               f"torch {torch.__version__}, CUDA {torch.version.cuda}"))
    return rows


def optional(name: str) -> str | None:
    """Why the optional package `name` cannot be used here, or None when it imports."""
    import importlib

    try:
        importlib.import_module(name)
        return None
    except (ImportError, OSError, RuntimeError) as error:
        return f"{name} does not import ({type(error).__name__}: {error})"


# ---- the CUDA-marked tests ------------------------------------------------------------------------

def cuda_test_files() -> list[str]:
    """Test files with CUDA-marked tests (only these are collected: the rest import test-only packages)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text())


def cuda_test_rows(env: dict, out: Path, log: Path, timeout: float, cuda: bool) -> list[Row]:
    report = out / "cuda-tests.xml"
    code = run([PYTHON, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={report}",
                *cuda_test_files()], env, log, timeout)
    if not report.is_file():
        return [fail("pytest -m cuda", f"exit {code}, no report", f"see {log}")]
    passed, failed, skipped = [], [], {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = case.get("name")
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if problem is not None:
            failed.append(name)
        elif skip is not None:
            skipped.setdefault(skip.get("message", "skipped"), []).append(name)
        else:
            passed.append(name)
    summary = f"{len(passed)} passed, {len(failed)} failed, {sum(map(len, skipped.values()))} not run"
    note = ", ".join(failed) or " ".join(cuda_test_files())
    if failed or code not in (0, 5) or (cuda and not passed):
        rows = [fail("pytest -m cuda", summary, note)]
    else:
        rows = [ok("pytest -m cuda", summary, note) if passed else not_run("pytest -m cuda", "no CUDA GPU: " + summary)]
    rows += [not_run(f"pytest -m cuda: {len(names)} test(s)", f"{reason}: {', '.join(names)}")
             for reason, names in skipped.items()]
    return rows


# ---- rollout alone ---------------------------------------------------------------------------------

def word_level_tokenizer(vocab_size: int):
    """A tokenizer of exactly `vocab_size` ids, made here (no download): words w0, w1, ... and three
    special tokens; decoding joins words with spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(vocab_size - len(specials))])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])


def random_model(shape: Shape, dtype: str, device, attn_implementation: str):
    """A randomly initialised Qwen2 of `shape` (transformers' own initialisation) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from grpo.runtime.model import DTYPES

    tokenizer = word_level_tokenizer(shape.vocab)
    config = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=32768, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], attn_implementation=attn_implementation)
    return model, tokenizer


def random_prompts(num_prompts: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Prompts of about `length` tokens (up to 4 % shorter, so the batch is padded), ids past the specials."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length - (i % 5) * length // 100,), generator=generator).tolist()
            for i in range(num_prompts)]


class CompileWatch:
    """Graphs compiled and CUDA-graph skips (torch._dynamo counters) between `start` and `stop`; the
    recompile and skip messages themselves go to the log."""

    def __init__(self):
        import torch

        self.counters = torch._dynamo.utils.counters
        torch._logging.set_logs(recompiles=True, cudagraphs=True)
        self.graphs = self.skips = 0

    def start(self):
        self._graphs = self.counters["stats"]["unique_graphs"]
        self._skips = self.counters["inductor"]["cudagraph_skips"]

    def stop(self):
        self.graphs = self.counters["stats"]["unique_graphs"] - self._graphs
        self.skips = self.counters["inductor"]["cudagraph_skips"] - self._skips


def rollout_rows(args, device: str, cuda: bool) -> list[Row]:
    """Rollout alone: eager and compiled, at each row count; then the sampler-trainer agreement."""
    import torch

    from grpo.rollout import SamplingParams, completion_logprobs, generate
    from grpo.runtime.model import attach_lora, load_model_and_tokenizer, resolve_attention

    dtype = "bfloat16" if cuda else "float32"
    attention = resolve_attention("auto", cuda, dtype)
    shape = QWEN25_05B if cuda else SMALL
    if args.model:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=dtype, device=device,
                                                    attn_implementation=attention)
        name = Path(args.model).name
    else:
        model, tokenizer = random_model(shape, dtype, device, attention)
        name = "random Qwen2.5-0.5B shape" if cuda else "random small Qwen2"
    model = attach_lora(model, 16, 16, 0.0, LORA_MODULES).eval()
    config = model.get_base_model().config
    is_05b = (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (896, 24, 2)
    rows = [ok("rollout model", f"{name}, {dtype}, attention {attention}, LoRA r=16 on {len(LORA_MODULES)} modules",
               f"{sum(p.numel() for p in model.parameters()) / 1e6:,.1f}M parameters")]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens, stop_strings=STOP_STRINGS,
                            ignore_eos=True)
    watch, rates, batches, peak = CompileWatch(), {}, {}, 0.0

    def measure(compiled: bool, num_rows: int) -> list[Row]:
        nonlocal peak
        mode = "compiled" if compiled else "eager"
        prompts = random_prompts(num_rows // GROUP, args.prompt_len, len(tokenizer), seed=num_rows)
        seeds = list(range(len(prompts)))
        started = time.perf_counter()
        warm = params if compiled else SamplingParams(1.0, 1.0, 8, STOP_STRINGS, ignore_eos=True)
        generate(model, tokenizer, prompts, GROUP, warm, seeds, compiled=compiled)  # compiles the shape
        warm_s = time.perf_counter() - started
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        watch.start()
        started = time.perf_counter()
        batch = generate(model, tokenizer, prompts, GROUP, params, seeds, compiled=compiled)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        watch.stop()
        tokens = int(batch.completion_mask.sum())
        rates[mode, num_rows], batches[mode, num_rows] = tokens / seconds, batch
        memory = ""
        if cuda:
            peak = max(peak, torch.cuda.max_memory_reserved() / 2**30)
            memory = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        note = (f"{tokens} tokens in {seconds:.2f} s; warm-up {warm_s:.0f} s{' (compiles)' if compiled else ''}; "
                f"recompiles {watch.graphs}, CUDA-graph skips {watch.skips}{memory}")
        complete = tokens == num_rows * args.new_tokens  # EOS ignored: every row runs to the end
        good = complete and watch.graphs == 0 and watch.skips == 0
        return [(ok if good else fail)(f"rollout {mode}, {num_rows} rows", f"{tokens / seconds:,.0f} tokens/s", note)]

    for compiled in (False, True):  # each measurement on its own: a failed compile leaves the eager rows
        for num_rows in args.rows:
            mode = "compiled" if compiled else "eager"
            guarded(f"rollout {mode}, {num_rows} rows", rows, measure, compiled, num_rows)
    big = max(args.rows)
    if not (cuda and is_05b):
        rows.append(not_run("target tokens/s", "set for the Qwen2.5-0.5B shape on a GPU"))
    elif ("compiled", big) in rates:
        rate = rates["compiled", big]
        rows.append((ok if rate >= TARGET_TOKENS_PER_S else fail)(
            f"target: >= {TARGET_TOKENS_PER_S:,} tokens/s at {big} rows, compiled", f"{rate:,.0f} tokens/s"))
    else:
        rows.append(fail(f"target: >= {TARGET_TOKENS_PER_S:,} tokens/s at {big} rows, compiled", "no measurement"))
    limit = 0.02 if dtype != "float32" else 1e-4
    for mode in ("eager", "compiled"):
        if (mode, big) not in batches:
            continue
        batch = batches[mode, big].select_groups(list(range(min(8, big // GROUP))))  # 64 rows
        with torch.no_grad():
            trainer = completion_logprobs(model, batch, temperature=1.0).float().cpu()
        mask = batch.completion_mask.bool()
        gap = (batch.sampler_logprobs[mask] - trainer[mask]).abs()
        rows.append((ok if gap.mean() <= limit else fail)(
            f"sampler vs trainer log-probs, {mode}", f"mean |diff| {gap.mean():.2e}",
            f"max {gap.max():.2e} over {int(mask.sum())} tokens; limit on the mean {limit:g} ({dtype})"))
    if cuda:
        peak = max(peak, torch.cuda.max_memory_reserved() / 2**30)
        rows.append(ok("peak GPU memory (rollout)", f"{peak:.1f} GiB reserved"))
    return rows


# ---- training: killed and resumed -------------------------------------------------------------------

def run(command: list[str], env: dict, log: Path, timeout: float) -> int:
    with log.open("a") as handle:
        handle.write("\n$ " + " ".join(command) + "\n")
        handle.flush()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9


def train_arguments(model_dir: Path, out: Path, steps: int) -> list[str]:
    """A few quick steps on the tiny model, with a reward random text has spread in (digit_share,
    registered by tests/helpers/train_with_digit_reward.py), so the adapter moves every step."""
    return ["--output-dir", str(out), f"model.name={model_dir}", "model.lora_r=4", "model.lora_alpha=8",
            "data.task=synthetic", "data.n_shot=0", "data.num_synthetic=64", "data.limit_eval=4",
            "rollout.group_size=4", "rollout.max_new_tokens=8", "train.batch_size=8", "train.grad_accum_steps=2",
            f"train.max_steps={steps}", "train.learning_rate=0.05", "train.max_seq_length=512", "log.report_to=[]",
            "log.eval_batch_size=4", "log.save_every=1", "rewards=[{name: digit_share, weight: 1.0}]"]


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    path = out / "final" / "adapter" / "adapter_model.safetensors"
    return load_file(path) if path.is_file() else {}


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def killed_and_resumed(model_dir: Path, out: Path, env: dict, log: Path, timeout: float, cuda: bool) -> list[Row]:
    import torch

    command = [PYTHON, "-m", "tests.helpers.train_with_digit_reward"]
    started = time.perf_counter()
    straight = out / "straight"
    code = run(command + train_arguments(model_dir, straight, 3), env, log, timeout)
    if code != 0 or logged_steps(straight) != [1, 2, 3]:
        return [fail("train 3 steps", f"exit {code}, steps {logged_steps(straight)}", f"see {log}")]
    interrupted = out / "interrupted"
    with log.open("a") as handle:
        proc = subprocess.Popen(command + train_arguments(model_dir, interrupted, 3), cwd=REPO, env=env,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        second = interrupted / "checkpoints" / "step-000002"  # written whole, then renamed into place
        deadline = time.perf_counter() + timeout
        while not second.is_dir() and proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reached, killed_after, finished_early = second.is_dir(), logged_steps(interrupted), (interrupted / "final").exists()
    code = run(command + train_arguments(model_dir, interrupted, 3), env, log, timeout)
    a, b = adapter(straight), adapter(interrupted)
    if code != 0 or not a or a.keys() != b.keys():
        return [fail("train: killed after step 2, resumed", f"exit {code}", f"see {log}")]
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)  # B starts at 0
    # bitwise on CPU; on a GPU, atomics in attention backward kernels may reorder float sums
    tolerance = 1e-5 + 1e-3 * moved if cuda else 1e-6
    steps = logged_steps(interrupted)
    good = reached and not finished_early and steps == [1, 2, 3] and gap <= tolerance and moved > 0
    return [(ok if good else fail)(
        "train: killed after step 2, resumed to 3", f"max |adapter diff| {gap:.1e} (limit {tolerance:.1e})",
        f"killed with steps {killed_after} logged{' (too late: it had finished)' if finished_early else ''}, "
        f"then {steps}; {time.perf_counter() - started:.0f} s"
        f"{', ' + str(torch.cuda.get_device_name(0)) if cuda else ''}")]


def two_process_rows(model_dir: Path, out: Path, env: dict, log: Path, timeout: float, cuda: bool) -> list[Row]:
    """train.strategy ddp and zero3 on two processes: two GPUs (NCCL) or, with --cpu, two CPU processes (gloo)."""
    import torch

    rows = []
    if cuda and torch.cuda.device_count() < 2:
        return [not_run(f"two GPUs, train.strategy={s}", f"{torch.cuda.device_count()} GPU here")
                for s in ("ddp", "zero3")]
    for strategy in ("ddp", "zero3"):
        check = f"two {'GPUs' if cuda else 'CPU processes'}, train.strategy={strategy}"
        blocker = optional("deepspeed") if strategy == "zero3" else None
        if blocker:
            rows.append(not_run(check, blocker))
            continue
        target = out / f"two-{strategy}"
        code = run([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                    "tests.helpers.train_with_digit_reward", *train_arguments(model_dir, target, 2),
                    f"train.strategy={strategy}"], env, log, timeout)
        steps = logged_steps(target)
        rows.append((ok if code == 0 and steps == [1, 2] and adapter(target) else fail)(
            check, f"exit {code}, steps {steps}"))
    return rows


def qlora_and_flash_rows(cuda: bool) -> list[Row]:
    """What the CUDA-marked tests cover when the package is there, named here when it is not."""
    from grpo.runtime.model import flash_attention_blocker

    rows = []
    blocker = optional("bitsandbytes") or (None if cuda else "4-bit weights need a CUDA GPU")
    rows.append(not_run("bitsandbytes (QLoRA)", blocker) if blocker else
                ok("bitsandbytes (QLoRA)", "imports", "the CUDA-marked QLoRA test trains with it"))
    blocker = flash_attention_blocker(cuda, "bfloat16")
    rows.append(not_run("flash-attn", blocker) if blocker else
                ok("flash-attn", "imports: model.attn_implementation auto picks flash_attention_2",
                   "the rollout rows used it for the prompt pass"))
    return rows


# ---- the run ------------------------------------------------------------------------------------------

def guarded(check: str, rows: list[Row], build, *args) -> None:
    """Add build(*args)'s rows; an exception is this check's FAIL row (infrastructure errors are failures)."""
    try:
        rows.extend(build(*args))
    except Exception as error:  # noqa: BLE001 - reported as the check's failure, with the traceback logged
        logging.getLogger("gpu_check").error("%s failed:\n%s", check, traceback.format_exc())
        rows.append(fail(check, f"{type(error).__name__}: {error}"[:200]))


def print_table(rows: list[Row]) -> None:
    width = max(len(r.check) for r in rows)
    print(f"\n{'check':<{width}}  {'status':<7}  {'result':<30}  note")
    for r in rows:
        print(f"{r.check:<{width}}  {r.status:<7}  {r.result:<30}  {r.note}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--cpu", action="store_true", help="the same flow on CPU at small sizes")
    parser.add_argument("--model", help="a local model folder for the rollout rows (real weights)")
    parser.add_argument("--rows", type=int, nargs="+", help="rollout rows (default: 32 512; --cpu: 8 32)")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens (default: 900; --cpu: 40)")
    parser.add_argument("--new-tokens", type=int, help="new tokens per row (default: 256; --cpu: 16)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds each subprocess may take")
    args = parser.parse_args(argv)
    args.rows = args.rows or ([8, 32] if args.cpu else [32, 512])
    args.prompt_len = args.prompt_len or (40 if args.cpu else 900)
    args.new_tokens = args.new_tokens or (16 if args.cpu else 256)
    started = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    logging.basicConfig(filename=log, level=logging.WARNING)
    site = out / "wheels-site"
    wheels = unpack_wheels(WHEELS, site)
    sys.path[:0] = [str(site), str(REPO)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}

    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("no CUDA GPU here: run this on a GPU machine, or pass --cpu to check the flow", file=sys.stderr)
        return 2
    if args.cpu:
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    device = "cuda" if cuda else "cpu"
    rows = [ok("wheels brought", f"{len(wheels)} from {WHEELS.relative_to(REPO)}", ", ".join(wheels))
            if wheels else not_run("wheels brought", f"none in {WHEELS.relative_to(REPO)}")]
    guarded("imports", rows, lambda: import_rows(cuda))
    guarded("pytest -m cuda", rows, lambda: cuda_test_rows(env, out, log, 3 * args.timeout, cuda))
    guarded("rollout", rows, lambda: rollout_rows(args, device, cuda))
    from tests.tiny_model import build_tiny_model

    model_dir = out / "tiny-llama"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir)
    guarded("train: killed and resumed", rows,
            lambda: killed_and_resumed(model_dir, out / "resume", env, log, args.timeout, cuda))
    guarded("two processes", rows, lambda: two_process_rows(model_dir, out, env, log, args.timeout, cuda))
    guarded("optional packages", rows, lambda: qlora_and_flash_rows(cuda))
    minutes = (time.perf_counter() - started) / 60
    rows.append((ok if minutes < 8 or not cuda else fail)("wall time", f"{minutes:.1f} min", "limit 8 min on the GPU"))
    (out / "gpu_check.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print_table(rows)
    print(f"\nlog: {log}")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
