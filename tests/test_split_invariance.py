"""The same gradient however a step is cut: for every aggregation and every registered policy loss, the
adapter's gradient of one optimizer step on a fixed rollout (unequal completion lengths, ratios on both
sides of the clip range) is the same for one process with the whole batch in one micro-batch, one process
with one-prompt micro-batches, and two processes (gloo) under ddp and zero3 (tests/helpers/split_gradients.py).
float64 agrees to 1e-9 (one process, ddp); ZeRO-3 runs float32 and agrees to 1e-5, relative to the largest
entry of each gradient."""

import sys

import pytest
import torch

from tests.helpers.split_gradients import PAIRS, single_process_gradients
from tests.test_distributed import finish, free_port, start

IDS = [f"{a}/{p}" for a, p in PAIRS]


def two_ranks(model_dir, out, strategy: str) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "tests.helpers.split_gradients", model_dir, str(out), strategy]
    finish([start(command)], f"two-rank gradients ({strategy})")
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    return {
        "whole-float64": single_process_gradients(tiny_model_dir, torch.float64, 4),
        "one-prompt-float64": single_process_gradients(tiny_model_dir, torch.float64, 1),
        "whole-float32": single_process_gradients(tiny_model_dir, torch.float32, 4),
        "ddp-float64": two_ranks(tiny_model_dir, folder / "ddp.pt", "ddp"),
        "zero3-float32": two_ranks(tiny_model_dir, folder / "zero3.pt", "zero3"),
    }


def worst_relative_error(expected: dict, got: dict) -> float:
    assert expected.keys() == got.keys()
    return max(((expected[n] - got[n]).abs().max() / expected[n].abs().max()).item() for n in expected)


@pytest.mark.parametrize("pair", IDS)
@pytest.mark.parametrize("cut, reference, tolerance", [
    pytest.param("one-prompt-float64", "whole-float64", 1e-9, id="one-prompt-micro-batches"),
    pytest.param("ddp-float64", "whole-float64", 1e-9, id="two-ranks-ddp"),
    pytest.param("zero3-float32", "whole-float32", 1e-5, id="two-ranks-zero3"),
])
def test_the_gradient_does_not_depend_on_the_cut(runs, pair, cut, reference, tolerance):
    expected = runs[reference][pair]["grads"]
    assert max(g.abs().max() for g in expected.values()) > 1e-3  # a real gradient, not zeros
    assert worst_relative_error(expected, runs[cut][pair]["grads"]) < tolerance


@pytest.mark.parametrize("pair", IDS)
def test_logged_token_means_do_not_depend_on_the_cut_and_clipping_acts(runs, pair):
    """The ratio spreads over [0.55, 1.65]: each loss's clipping indicator is non-zero, and the token means
    (kl, clip fractions) are the same on one process and on two ranks."""
    whole = runs["whole-float64"][pair]["means"]
    indicator = "kl_cov_frac" if pair.endswith("kl_cov") else "clip_frac"
    assert 0 < whole[indicator] < 1 and whole["kl"] > 0
    for cut in ("one-prompt-float64", "ddp-float64"):
        assert runs[cut][pair]["means"] == pytest.approx(whole, rel=1e-9)
