"""train.strategy=auto's decision (grpo/backends/strategy.py), against sizes worked out by hand."""

import pytest

from grpo.backends.strategy import BYTES_PER_PARAMETER, pick_strategy, zero3_refusal
from grpo.runtime.config import load_config

GIB = 2**30


@pytest.mark.parametrize("base, budget, refusal, expected", [
    pytest.param(1.0 * GIB, 40 * GIB, None, "ddp", id="0.5B-bf16-on-an-80GB-GPU"),  # 0.5B x 2 bytes = 1 GiB
    pytest.param(140 * GIB, 40 * GIB, None, "zero3", id="70B-bf16-on-an-80GB-GPU"),
    pytest.param(40 * GIB, 40 * GIB, None, "ddp", id="exactly-the-budget"),
    pytest.param(140 * GIB, 40 * GIB, "model.use_lora=false under ZeRO-3", "ddp", id="zero3-refuses-the-recipe"),
])
def test_pick_strategy(base, budget, refusal, expected):
    strategy, why = pick_strategy(base, budget, refusal)
    assert strategy == expected and why  # the reason is logged with the choice


def test_nf4_bytes_per_parameter():
    # 4 bits, plus one float32 absmax per block of 64 weights: 0.5 + 4 / 64 = 0.5625
    assert BYTES_PER_PARAMETER["4bit"] == 0.5625


def test_what_zero3_refuses_makes_auto_ddp():
    assert zero3_refusal(load_config(None, [])) is None
    assert "use_lora" in zero3_refusal(load_config(None, ["model.use_lora=false"]))
