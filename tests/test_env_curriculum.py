"""The adaptive curriculum: up, down, the window, sampling, exact resume, the same state on every rank."""

import json
import math

import pytest

from grpo.environments import Curriculum, CurriculumConfig, episode_success


def records(env: str, level: int, successes: int, failures: int):
    return [(env, level, True)] * successes + [(env, level, False)] * failures


def test_moves_up_when_the_top_level_passes_the_threshold():
    c = Curriculum({"cart": CurriculumConfig(min_episodes=4, promote_at=0.75, window=2)}, seed=0)
    assert c.level_range("cart") == (0, 0)
    # 3 of 4 at level 0 = 0.75 >= 0.75: up to 1; the range is the 2 hardest levels reached: [0, 1]
    assert c.update(records("cart", 0, 3, 1)) == [("cart", 0, 1)]
    assert c.level_range("cart") == (0, 1)
    # level-0 episodes no longer count toward a decision; 2 of 4 at level 1 = 0.5 < 0.75: stays, count restarts
    assert c.update(records("cart", 0, 4, 0) + records("cart", 1, 2, 2)) == []
    assert c.level_range("cart") == (0, 1)
    # 4 of 4 at level 1: up to 2, and low follows: [1, 2]
    assert c.update(records("cart", 1, 4, 0)) == [("cart", 1, 2)]
    assert c.level_range("cart") == (1, 2)


def test_a_decision_needs_min_episodes_at_the_top_level():
    c = Curriculum({"cart": CurriculumConfig(min_episodes=4)}, seed=0)
    assert c.update(records("cart", 0, 3, 0)) == []  # 3 successes are not yet 4 episodes
    assert c.update(records("cart", 0, 1, 0)) == [("cart", 0, 1)]


def test_never_moves_down_by_default_and_moves_down_below_demote_below():
    rlve = Curriculum({"e": CurriculumConfig(min_episodes=2, start_level=3)}, seed=0)
    assert rlve.update(records("e", 3, 0, 10)) == [] and rlve.level_range("e") == (0, 3)
    down = Curriculum({"e": CurriculumConfig(min_episodes=2, start_level=3, demote_below=0.5, window=2)}, seed=0)
    # 0 of 2 at level 3 < 0.5: down to 2 ([1, 2]); then 1 of 2 at level 2 = 0.5: neither up (< 0.9) nor down
    assert down.update(records("e", 3, 0, 2)) == [("e", 3, 2)]
    assert down.level_range("e") == (1, 2)
    assert down.update(records("e", 2, 1, 1)) == []
    # never below min_level
    floor = Curriculum({"e": CurriculumConfig(min_episodes=1, demote_below=0.5)}, seed=0)
    assert floor.update(records("e", 0, 0, 3)) == [] and floor.level_range("e") == (0, 0)


def test_never_above_max_level():
    c = Curriculum({"e": CurriculumConfig(min_episodes=1, max_level=2, start_level=2)}, seed=0)
    assert c.update(records("e", 2, 5, 0)) == [] and c.level_range("e") == (0, 2)


def test_levels_are_uniform_over_the_range_and_a_function_of_seed_env_step_row():
    c = Curriculum({"a": CurriculumConfig(start_level=5, window=3), "b": CurriculumConfig()}, seed=7)
    levels = [c.sample_level("a", step, row) for step in range(50) for row in range(40)]
    assert set(levels) == {3, 4, 5}
    shares = [levels.count(level) / len(levels) for level in (3, 4, 5)]
    assert all(abs(s - 1 / 3) < 0.03 for s in shares), shares  # 2000 draws: sd of a share is about 0.011
    assert c.sample_level("a", 3, 9) == c.sample_level("a", 3, 9)
    other_seed = Curriculum({"a": CurriculumConfig(start_level=5, window=3), "b": CurriculumConfig()}, seed=8)
    assert [other_seed.sample_level("a", 0, r) for r in range(40)] != levels[:40]
    assert {c.sample_level("b", s, r) for s in range(5) for r in range(5)} == {0}


def _run(curriculum: Curriculum, steps: range, success_of) -> list[int]:
    """A stand-in training loop: sample 8 rows' levels, record outcomes decided by `success_of(level, row)`."""
    drawn = []
    for step in steps:
        levels = [curriculum.sample_level("e", step, row) for row in range(8)]
        drawn += levels
        curriculum.update([("e", level, success_of(level, row)) for row, level in enumerate(levels)])
    return drawn


def _solves_up_to_three(level: int, row: int) -> bool:
    return level <= 3 or row % 4 == 0  # a policy that solves levels 0-3 and a quarter of the rest


def test_resume_mid_run_gives_the_same_later_levels():
    config = {"e": CurriculumConfig(min_episodes=4, promote_at=0.75, demote_below=0.3, window=3)}
    whole = Curriculum(config, seed=3)
    uninterrupted = _run(whole, range(40), _solves_up_to_three)
    first = Curriculum(config, seed=3)
    before = _run(first, range(20), _solves_up_to_three)
    saved = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores survives JSON
    resumed = Curriculum(config, seed=3)
    resumed.load_state_dict(saved)
    after = _run(resumed, range(20, 40), _solves_up_to_three)
    assert before + after == uninterrupted
    assert resumed.state_dict() == whole.state_dict()
    assert max(uninterrupted) >= 4  # the run did move (so the comparison means something)


def test_ranks_fed_the_same_gathered_records_hold_the_same_state():
    config = {"e": CurriculumConfig(min_episodes=4, promote_at=0.75)}
    ranks = [Curriculum(config, seed=1) for _ in range(2)]
    for step in range(30):
        # each rank plays its half of the global rows, then all records are gathered in rank order
        gathered = []
        for rank, curriculum in enumerate(ranks):
            for row in range(rank * 4, rank * 4 + 4):
                level = curriculum.sample_level("e", step, row)
                gathered.append(("e", level, _solves_up_to_three(level, row)))
        for curriculum in ranks:
            curriculum.update(gathered)
    assert ranks[0].state_dict() == ranks[1].state_dict()
    single = Curriculum(config, seed=1)
    _run(single, range(30), _solves_up_to_three)  # one process playing all 8 rows: the same state
    assert single.state_dict() == ranks[0].state_dict()


def test_metrics_per_environment():
    c = Curriculum({"cart": CurriculumConfig(min_episodes=4, window=2)}, seed=0)
    c.update(records("cart", 0, 4, 0) + records("cart", 1, 1, 2))
    assert c.metrics() == {
        "curriculum/cart/low": 0.0, "curriculum/cart/high": 1.0, "curriculum/cart/moves": 1.0,
        "curriculum/cart/top_episodes": 3.0, "curriculum/cart/top_success_rate": 1 / 3,
        "curriculum/cart/success_rate_level_0": 1.0, "curriculum/cart/success_rate_level_1": 1 / 3,
    }


@pytest.mark.parametrize("record, message", [
    pytest.param(("chess", 0, True), "no environment 'chess'", id="unknown-env"),
    pytest.param(("e", 9, True), "level must be an integer in \\[0, 8\\]", id="level-too-high"),
    pytest.param(("e", 1.0, True), "level must be an integer", id="float-level"),
    pytest.param(("e", 0, 1), "success must be a bool", id="int-success"),
])
def test_bad_records_are_refused(record, message):
    with pytest.raises(ValueError, match=message):
        Curriculum({"e": CurriculumConfig()}, seed=0).update([record])


@pytest.mark.parametrize("kwargs, message", [
    pytest.param({"start_level": 9}, "min_level <= start_level <= max_level", id="start-above-max"),
    pytest.param({"window": 0}, "must be >= 1", id="empty-window"),
    pytest.param({"promote_at": 0.0}, "promote_at", id="promote-at-zero"),
    pytest.param({"demote_below": 0.95}, "demote_below", id="demote-above-promote"),
    pytest.param({"min_episodes": 2.5}, "min_episodes", id="float-count"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CurriculumConfig(**kwargs)


def test_a_checkpoint_from_another_setup_is_refused():
    state = Curriculum({"e": CurriculumConfig()}, seed=0).state_dict()
    with pytest.raises(ValueError, match="same environments"):
        Curriculum({"f": CurriculumConfig()}, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="same seed"):
        Curriculum({"e": CurriculumConfig()}, seed=1).load_state_dict(state)


@pytest.mark.parametrize("reward, success, expected", [
    pytest.param(0.2, True, True, id="own-flag-wins"),
    pytest.param(1.0, False, False, id="own-flag-false"),
    pytest.param(0.75, None, True, id="reward-at-threshold"),
    pytest.param(0.5, None, False, id="reward-below"),
])
def test_episode_success(reward, success, expected):
    assert episode_success(reward, success, threshold=0.75) is expected


@pytest.mark.parametrize("reward", [None, math.nan])
def test_an_unscored_episode_is_not_a_failure(reward):
    with pytest.raises(ValueError, match="cannot be counted"):
        episode_success(reward, None, threshold=0.5)
