"""reasoning-gym as a task source (data/reasoning_gym_task.py) and its checkers as a reward
(rewards/reasoning_gym.py), on the real package."""

import pytest

import rewards
from data.reasoning_gym_task import INSTRUCTION, dataset_config, load_reasoning_gym_rows, max_level
from rewards.registry import RewardInfrastructureError
from tests.tiny_model import byte_level_tokenizer

ARITHMETIC = {"source_dataset": "basic_arithmetic"}
SPELL = {"source_dataset": "spell_backward"}


def score(completion, answer, metadata):
    return rewards.get("reasoning_gym")([completion], answer=[answer], metadata=[metadata])[0]


@pytest.mark.parametrize("completion, answer, metadata, expected", [
    pytest.param("so <answer>-4</answer>", "-4", ARITHMETIC, 1.0, id="right"),
    pytest.param("<answer> -4 </answer>", "-4", ARITHMETIC, 1.0, id="spaces-stripped"),
    pytest.param("<answer>5</answer>", "-4", ARITHMETIC, 0.0, id="wrong"),
    # the base checker: the oracle inside a longer answer earns len(oracle) / len(answer) = 2 / 6
    pytest.param("<answer>x = -4</answer>", "-4", ARITHMETIC, 2 / 6, id="oracle-inside-partial"),
    pytest.param("", "-4", ARITHMETIC, 0.0, id="empty"),
    pytest.param("The answer is -4.", "-4", ARITHMETIC, 0.0, id="no-answer-tags"),
    pytest.param("<answer>-4", "-4", ARITHMETIC, 0.0, id="unclosed-tag"),
    pytest.param("<answer>-4</answer> or <answer>7</answer>", "-4", ARITHMETIC, 0.0, id="hedging-last-counts"),
    pytest.param("<answer>7</answer> no, <answer>-4</answer>", "-4", ARITHMETIC, 1.0, id="corrected-last-counts"),
    # spell_backward's own checker: case-insensitive; 6 of 7 letters in place earn 6/7
    pytest.param("<answer>AINOMMA</answer>", "ainomma", SPELL, 1.0, id="spell-case-insensitive"),
    pytest.param("<answer>ainommx</answer>", "ainomma", SPELL, 6 / 7, id="spell-partial"),
    pytest.param("<answer>" + "9" * 3000 + "</answer>", "-4", ARITHMETIC, 0.0, id="answer-too-long"),
])
def test_scores_are_the_datasets_own_checker(completion, answer, metadata, expected):
    assert score(completion, answer, metadata) == pytest.approx(expected)


def test_a_flood_of_open_tags_is_read_in_two_reverse_scans():
    # a left-to-right lazy regex would rescan the tail from each of the 200,000 tags
    assert score("<answer>" * 200_000 + "</answer>", "-4", ARITHMETIC) == 0.0
    assert score("<answer>" * 200_000, "-4", ARITHMETIC) == 0.0


@pytest.mark.parametrize("metadata, message", [
    pytest.param({}, "without a 'source_dataset'", id="no-source"),
    pytest.param("basic_arithmetic", "without a 'source_dataset'", id="not-a-dict"),
    pytest.param({"source_dataset": "no_such_dataset"}, "does not have", id="unknown-dataset"),
])
def test_rows_without_a_dataset_are_errors(metadata, message):
    with pytest.raises(ValueError, match=message):
        score("<answer>1</answer>", "1", metadata)


def test_a_checker_that_raises_is_an_infrastructure_error(monkeypatch):
    import rewards.reasoning_gym as module

    def broken(name):
        def checker(answer, entry):
            raise KeyError("metadata field 'expression'")
        return checker

    monkeypatch.setattr(module, "_checker", broken)
    with pytest.raises(RewardInfrastructureError, match="'basic_arithmetic' checker raised KeyError"):
        score("<answer>1</answer>", "1", ARITHMETIC)


NAMES = ["basic_arithmetic", "spell_backward", "count_bits", "leg_counting"]


@pytest.mark.parametrize("level", [0, 2, 10])
def test_each_rows_own_answer_scores_one(level):
    rows = load_reasoning_gym_rows(NAMES, None, 16, seed=3, level=level, style="plain")
    scores = rewards.get("reasoning_gym")([f"<answer>{r['answer']}</answer>" for r in rows],
                                          answer=[r["answer"] for r in rows], metadata=[r["metadata"] for r in rows],
                                          question=[r["question"] for r in rows])
    assert scores == [1.0] * 16
    assert {r["rg_dataset"] for r in rows} == set(NAMES)
    assert all(r["metadata"]["source_dataset"] == r["rg_dataset"] and r["level"] == level for r in rows)


def test_rows_are_a_function_of_their_arguments():
    make = lambda seed: load_reasoning_gym_rows(NAMES, [1, 2, 3, 4], 20, seed=seed, level=1, style="plain")  # noqa: E731
    assert make(0) == make(0)
    assert [r["question"] for r in make(0)] != [r["question"] for r in make(1)]


def test_weights_pick_the_datasets():
    only_first = load_reasoning_gym_rows(["basic_arithmetic", "spell_backward"], [1, 0], 30, seed=0, style="plain")
    assert {r["rg_dataset"] for r in only_first} == {"basic_arithmetic"}
    mixed = load_reasoning_gym_rows(["basic_arithmetic", "spell_backward"], [3, 1], 400, seed=0, style="plain")
    share = sum(r["rg_dataset"] == "basic_arithmetic" for r in mixed) / 400
    assert abs(share - 0.75) < 0.07  # sd of the share at 400 draws is about 0.022


def test_levels_follow_reasoning_gyms_curriculum():
    # basic_arithmetic's curriculum: num_terms levels [2, 3, 4, 5, 6], num_digits [1, 2, 3, 4]; the inclusive
    # range at level L spans levels 0..L+1 of each attribute (reasoning-gym's ensure_interval), capped at its top
    spans = [(c.min_terms, c.max_terms, c.min_digits, c.max_digits)
             for c in (dataset_config("basic_arithmetic", level, 0, 1) for level in (0, 1, 3, 4, 9))]
    assert spans == [(2, 2, 1, 1), (2, 3, 1, 2), (2, 5, 1, 4), (2, 6, 1, 4), (2, 6, 1, 4)]
    assert max_level("basic_arithmetic") == 4
    assert max_level("gsm_symbolic") == 0
    with pytest.raises(ValueError, match="has no difficulty curriculum"):
        dataset_config("gsm_symbolic", 1, 0, 1)


def test_chat_prompts_carry_the_instruction():
    tokenizer = byte_level_tokenizer()
    (row,) = load_reasoning_gym_rows(["spell_backward"], None, 1, seed=0, tokenizer=tokenizer)
    assert row["prompt"].startswith("<|im_start|>system\n" + INSTRUCTION)
    assert row["question"] in row["prompt"] and row["prompt"].endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("kwargs, message", [
    pytest.param({"names": ["basic_arith"]}, "did you mean one of \\['basic_arithmetic'\\]", id="typo"),
    pytest.param({"names": []}, "one or more distinct", id="no-names"),
    pytest.param({"names": ["chain_sum", "chain_sum"]}, "one or more distinct", id="duplicate"),
    pytest.param({"weights": [1, -1]}, "non-negative", id="negative-weight"),
    pytest.param({"weights": [0, 0]}, "not all zero", id="zero-weights"),
    pytest.param({"weights": [1]}, "one non-negative number per dataset", id="too-few-weights"),
    pytest.param({"count": 0}, "positive integer", id="no-rows"),
    pytest.param({"level": -1}, "non-negative integer", id="negative-level"),
])
def test_bad_arguments_name_the_fix(kwargs, message):
    arguments = {"names": ["chain_sum", "spell_backward"], "weights": None, "count": 2, "seed": 0, "level": 0,
                 "style": "plain", **kwargs}
    with pytest.raises(ValueError, match=message):
        load_reasoning_gym_rows(**arguments)
