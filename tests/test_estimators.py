"""The advantage estimators a recipe picks (advantage.estimator), against values computed by hand."""

import math

import pytest
import torch

from grpo.algorithm.advantages import (
    ADVANTAGE_ESTIMATORS, estimate_advantages, leave_one_out_advantages, reinforce_pp_baseline_advantages,
)
from grpo.runtime.config import ConfigError, load_config


def test_rloo_by_hand():
    # group [1, 0, 0, 1]: r_0 = 1 against the others' mean (0 + 0 + 1) / 3 = 1/3 -> 2/3 (= 4/3 x (1 - 0.5));
    # group [2, 2]: no spread -> exactly 0
    out = leave_one_out_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    torch.testing.assert_close(out, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    assert leave_one_out_advantages(torch.tensor([2.0, 2.0]), 2).tolist() == [0.0, 0.0]


def test_reinforce_pp_baseline_by_hand():
    # groups [1, 0] and [3, 3], lengths 2, 1, 3, 4 (N = 10 tokens). Group-centered a = .5, -.5, 0, 0.
    # mu = (2 x .5 - 1 x .5) / 10 = .05; var = (2 x .45^2 + .55^2 + 3 x .05^2 + 4 x .05^2) / 9 = .725 / 9
    # sigma = .283823: A = .45 / sigma = 1.58549, -.55 / sigma = -1.93783, -.05 / sigma = -.176166 (twice):
    # the flat group is shifted, not 0, as verl's whitening does.
    out = reinforce_pp_baseline_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0]), torch.tensor([2, 1, 3, 4]), 2)
    sigma = math.sqrt(0.725 / 9)
    torch.testing.assert_close(out, torch.tensor([0.45, -0.55, -0.05, -0.05]) / sigma, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, expected", [
    pytest.param("grpo", [0.7071, -0.7071], id="grpo"),  # (r - .5) / (std .7071 + 1e-4)
    pytest.param("rloo", [1.0, -1.0], id="rloo"),  # 2 / 1 x (r - .5)
])
def test_the_registry_runs_each_estimator_on_the_weighted_total(name, expected):
    columns, weights = torch.tensor([[1.0], [0.0]]), torch.tensor([1.0])
    out = estimate_advantages(name, columns, weights, columns[:, 0], torch.tensor([3, 3]), 2)
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-3, rtol=0)


def test_every_estimator_is_a_recipe_choice_and_scale_is_grpo_only():
    for name in ADVANTAGE_ESTIMATORS:
        assert load_config(None, [f"advantage.estimator={name}"]).advantage.estimator == name
    with pytest.raises(ConfigError, match="advantage.scale='none' is GRPO's"):
        load_config(None, ["advantage.estimator=rloo", "advantage.scale=none"])
