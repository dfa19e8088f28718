"""One offline GRPO step on the multihop task with both of its rewards (tiny random Llama)."""

import json
import math

import train


def test_one_step_on_multihop_logs_both_rewards(tiny_model_dir, tmp_path):
    # The byte-level tokenizer spends a token per character: a short context keeps the prompt
    # (instruction + passages + question) well inside train.max_seq_length.
    train.main([
        "--output-dir", str(tmp_path),
        f"model.name={tiny_model_dir}", "model.lora_r=4", "model.lora_alpha=8",
        "data.task=multihop", "data.n_shot=0", "data.num_multihop=40", "data.multihop_entities=50",
        "data.multihop_passages=3", "data.multihop_context_chars=160", "data.limit_eval=2",
        "rollout.group_size=4", "rollout.max_new_tokens=8",
        "train.batch_size=8", "train.grad_accum_steps=1", "train.max_steps=1",
        "train.learning_rate=0.05", "train.max_seq_length=768",
        "log.report_to=[]", "log.eval_batch_size=2", "log.accuracy_reward=multihop_answer",
        "rewards=[{name: multihop_answer, weight: 1.0}, {name: multihop_rubric, weight: 0.5}]",
    ])
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1]
    for name in ("multihop_answer", "multihop_rubric"):
        assert 0.0 <= steps[0][f"reward/{name}/mean"] <= 1.0
    assert math.isfinite(steps[0]["loss"])
    assert (tmp_path / "final" / "adapter" / "adapter_model.safetensors").is_file()
