import pytest

import rewards
from rewards.registry import _REWARDS, register

BUILT_INS = ["code_execution", "gsm8k_correctness", "gsm8k_format", "keywords", "math_verify"]


def test_built_in_names_are_registered():
    assert set(BUILT_INS) <= set(rewards.names())


def test_get_returns_a_callable_named_after_the_reward():
    reward = rewards.get("gsm8k_format")
    assert reward.__name__ == "gsm8k_format"
    assert reward(["#### The final answer is 3"], prompts=["q"], answer=["3"]) == [0.5]


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(KeyError, match="unknown reward 'gsm8k'; valid names: .*gsm8k_correctness"):
        rewards.get("gsm8k")


def test_unknown_name_is_also_a_value_error_for_config_loaders():
    with pytest.raises(ValueError):
        rewards.get("nope")


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['tolerance'\]; valid options: none"):
        rewards.get("gsm8k_correctness", tolerance=0.1)


def test_register_adds_a_user_reward_with_bound_options():
    @register("test_length_bonus")
    def length_bonus(completions, *, scale=1.0, **columns):
        return [scale * len(c) for c in completions]

    try:
        assert "test_length_bonus" in rewards.names()
        assert rewards.get("test_length_bonus", scale=0.5)(["abcd"], prompts=["p"]) == [2.0]
        with pytest.raises(ValueError, match=r"valid options: \['scale'\]"):
            rewards.get("test_length_bonus", sclae=0.5)
    finally:
        del _REWARDS["test_length_bonus"]


def test_register_rejects_duplicates_and_bad_signatures():
    with pytest.raises(ValueError, match="already registered"):
        register("gsm8k_format")(lambda completions, **columns: [])
    with pytest.raises(TypeError, match="first parameter must be `completions`"):
        register("test_bad")(lambda texts, **columns: [])
    with pytest.raises(TypeError, match=r"must accept \*\*columns"):
        register("test_bad")(lambda completions: [])
    assert "test_bad" not in rewards.names()


@pytest.mark.parametrize("calls, invalid, expected", [
    pytest.param(4, 1, 0.875, id="three-of-four-valid"),  # 0.5 + 0.5 x 3/4
    pytest.param(2, 2, 0.5, id="all-invalid"),  # calls written, none ran
    pytest.param(0, 0, 0.0, id="no-call"),
    pytest.param(None, None, None, id="no-counts"),
])
def test_tool_call_format_by_hand(calls, invalid, expected):
    assert rewards.get("tool_call_format")(["x"], env_calls=[calls], env_invalid=[invalid]) == [expected]
    assert rewards.get("tool_call_format")(["single-turn"]) == [None]
