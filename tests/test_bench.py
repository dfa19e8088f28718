"""bench/: the analytic FLOP count against values worked out by hand, the decode ceiling's
bookkeeping on a tiny shape, and the timer that splits generation into prompt pass and decode."""

import time

import pytest
import torch

from bench.flops import Shape, decode_products_gflops, step_flops
from bench.ours import PrefillTimer

# 1 layer, hidden 2, ffn 4, one head of size 2, vocab 3, LoRA rank 1.
TINY = Shape(layers=1, hidden=2, ffn=4, heads=1, kv_heads=1, head_dim=2, vocab=3, lora_r=1)


def test_weights_by_hand():
    # q, k, v, o: 2x2 = 4 each; gate, up: 2x4 = 8 each; down 4x2 = 8 -> 40.
    # LoRA r=1: (in + out) each: 4, 4, 4, 4, 6, 6, 6 -> 34.
    assert TINY.linear_weights() == (40, 34)


def test_step_flops_by_hand():
    # One prompt of 2 tokens, G = 2 completions of 1 and 2 tokens.
    # Per token: frozen linear 2 x 40 = 80, LoRA 2 x 34 = 68; head 2 x 2 x 3 = 12;
    # attention 4 x 1 x 2 = 8 per context position (a token sees itself and all before it).
    # Prompt pass: 2 x 80 + (1 + 2) x 8 + one prompt's last logits 12 = 196 (adapter folded: no LoRA).
    # Decode: the 2-token row feeds its first token once: 80 + 12 + (2 + 1) x 8 = 116.
    # Reference (adapter off): 5 tokens x 80 + attention (3 + 3 + (3 + 4)) x 8 = 104 + 3 logits x 12 = 540.
    # Update forward: 540 + 5 x 68 (LoRA) + 3 x 12 (softmax @ W) = 916.
    # Backward: 5 x (80 + 68) + 2 x 104 + 5 x 68 = 740 + 208 + 340 = 1288.
    f = step_flops(TINY, prompt_lens=[2], completion_lens=[1, 2], group_size=2)
    assert (f["generate_prefill"], f["generate_decode"], f["generate"]) == (196, 116, 312)
    assert (f["ref_logprobs"], f["update_forward"], f["update_backward"]) == (540, 916, 1288)
    assert f["total"] == 312 + 540 + 916 + 1288
    assert (f["prompt_tokens_once"], f["completion_tokens"]) == (2, 3)
    # bfloat16 generation runs the adapter: + 2 prompt tokens and 1 decode token x 68.
    g = step_flops(TINY, prompt_lens=[2], completion_lens=[1, 2], group_size=2, lora_in_generation=True)
    assert (g["generate_prefill"], g["generate_decode"]) == (196 + 2 * 68, 116 + 68)


def test_decode_ceiling_counts_every_weight_product():
    c = decode_products_gflops(TINY, rows=4, repeats=1)
    assert c["layers"]["gflop"] == pytest.approx(2 * 4 * 40 / 1e9)  # 2 x rows x weights
    assert c["head"]["gflop"] == pytest.approx(2 * 4 * 6 / 1e9)
    assert c["gflop"] == pytest.approx(2 * 4 * 46 / 1e9)
    assert c["best_gflops"] > 0 and c["layers"]["backend"] in c["layers"]["gflops_by_backend"]


def test_prefill_timer_times_the_first_call_after_arm_only():
    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.delays = [0.05, 0.0]

        def forward(self, x):
            time.sleep(self.delays.pop(0))
            return x

    model = Slow()
    timer = PrefillTimer(model)
    model(torch.zeros(1))  # not armed: not timed
    assert timer.seconds == 0.0
    model.delays = [0.05, 0.0]
    timer.arm()
    model(torch.zeros(1))
    model(torch.zeros(1))  # a decode step: not the prompt pass
    assert 0.05 <= timer.seconds < 1.0


def test_the_bench_config_is_resolved_before_loading_and_an_unresolved_one_is_refused():
    from bench.ours import bench_config
    from bench.workloads import WORKLOADS, Shared
    from grpo.runtime.model import resolve_for_device
    from grpo.training.policy import build_policy

    cfg = bench_config(WORKLOADS["a"], Shared(), 2)
    with pytest.raises(ValueError, match="attn_implementation='auto' is not resolved"):
        build_policy(cfg, torch.device("cpu"))  # raises before loading anything
    resolved = resolve_for_device(cfg, cuda=False).model
    assert (resolved.attn_implementation, resolved.dtype) == ("sdpa", "float32")


def test_the_bench_times_train_steps_real_step_and_records_what_it_logged(tiny_model_dir, monkeypatch):
    """bench/ours.py on workload a's shape, the tiny model in place of the demo model: one warm-up and one
    measured step through build_run/train_step, with the step's logged KL and loss in the record (a renamed
    step statistic once broke the bench and nothing in the suite ran it)."""
    from bench.ours import run

    monkeypatch.setattr(torch.Tensor, "backward", torch.Tensor.backward)  # the bench's timer wraps it: undone after
    threads = torch.get_num_threads()
    try:
        result = run("a", steps=1, warmup=1, threads=1, model=str(tiny_model_dir))
    finally:
        torch.set_num_threads(threads)
    warmup, measured = result["steps"]
    assert (warmup["warmup"], measured["warmup"]) == (True, False)
    assert {type(measured[k]) for k in ("kl", "loss", "reward_mean")} == {float}
    assert torch.isfinite(torch.tensor([measured["kl"], measured["loss"]])).all()
    assert len(measured["completion_lens"]) == 64 and measured["phases_s"]["update_backward"] > 0.0
