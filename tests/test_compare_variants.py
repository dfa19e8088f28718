"""scripts/variant_stats.py against hand-computed values; scripts/compare_variants.py's pairing, table,
resuming and variant selection; the per-row held-out file a real tiny training run writes."""

import json

import numpy as np
import pytest

import train
from scripts import compare_variants as cv
from scripts import variant_stats as vs
from tests.helpers import train_with_digit_reward  # noqa: F401  (registers "digit_share")
from tests.test_train import tiny_args

# ---- the hierarchical bootstrap, its p-value and interval, Holm ---------------------------------


@pytest.mark.parametrize("value", [1.0, -1.0, 0.5], ids=["all-better", "all-worse", "all-half"])
def test_bootstrap_of_equal_differences_is_degenerate_at_that_value(value):
    # every row of every seed differs by `value`: any resample of seeds and rows has mean `value`
    resampled = vs.hierarchical_bootstrap([[value] * 5, [value] * 3, [value] * 7], resamples=1000)
    assert (resampled == value).all()
    assert vs.percentile_interval(resampled) == (value, value)
    assert vs.bootstrap_p_value(resampled) == 2 / 1001  # no resample on 0's side: 2 (1 + 0) / (B + 1)


def test_bootstrap_of_no_difference_has_p_one():
    resampled = vs.hierarchical_bootstrap([[0, 0], [0, 0, 0]], resamples=1000)
    assert vs.percentile_interval(resampled) == (0.0, 0.0)
    assert vs.bootstrap_p_value(resampled) == 1.0  # 2 (1 + 1000) / 1001, capped at 1


def test_bootstrap_resamples_seeds():
    # two seeds of one row each, d = 1 and 0; rows cannot vary, seeds can: the mean of two seeds
    # drawn with replacement is 1 (both the first: 1/4), 1/2 (one of each: 1/2) or 0 (1/4)
    resampled = vs.hierarchical_bootstrap([[1], [0]], resamples=10_000)
    shares = [float((resampled == v).mean()) for v in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.02)  # binomial sd 0.005 at B = 10000
    assert vs.percentile_interval(resampled) == (0.0, 1.0)  # 1/4 > 2.5% on each side
    assert vs.bootstrap_p_value(resampled) == pytest.approx(0.5, abs=0.03)  # 2 x P(<= 0) = 2 x 1/4


def test_bootstrap_resamples_rows_within_seeds():
    # two identical seeds with rows d = 1, 0: seed draws change nothing, the four redrawn rows are
    # fair coins: mean = Binomial(4, 1/2) / 4, P(0) = P(1) = 1/16 > 2.5%
    resampled = vs.hierarchical_bootstrap([[1, 0], [1, 0]], resamples=10_000)
    assert float((resampled == 0).mean()) == pytest.approx(1 / 16, abs=0.01)
    assert vs.percentile_interval(resampled) == (0.0, 1.0)
    assert vs.bootstrap_p_value(resampled) == pytest.approx(2 / 16, abs=0.015)


def test_bootstrap_variance_has_both_stages():
    # seed 0 rows 1,0,0,0 (mean 1/4, variance 3/16), seed 1 rows 1,1,0,0 (mean 1/2, variance 1/4).
    # One slot: Var = Var over seeds of the means + mean over seeds of (row variance / 4 rows)
    #   = ((1/4 - 3/8)^2 + (1/2 - 3/8)^2) / 2 + (3/16 / 4 + 1/4 / 4) / 2 = 1/64 + 7/128 = 9/128;
    # two independent slots: 9/256 = 0.03515625 (seeds only: 1/128, rows only: 7/256)
    resampled = vs.hierarchical_bootstrap([[1, 0, 0, 0], [1, 1, 0, 0]], resamples=10_000)
    assert float(resampled.mean()) == pytest.approx(3 / 8, abs=0.01)
    assert float(resampled.var()) == pytest.approx(9 / 256, rel=0.05)


def test_bootstrap_is_fixed_by_its_seed():
    diffs = [[1, 0, -1, 0], [0, 0, 1], [1, 1, 0, -1, 0]]
    first = vs.hierarchical_bootstrap(diffs, resamples=500, seed=3)
    assert (first == vs.hierarchical_bootstrap(diffs, resamples=500, seed=3)).all()
    assert not (first == vs.hierarchical_bootstrap(diffs, resamples=500, seed=4)).all()


@pytest.mark.parametrize("diffs", [[], [[1, 0], []]], ids=["no-seed", "a-seed-without-rows"])
def test_bootstrap_needs_rows(diffs):
    with pytest.raises(ValueError, match="at least one seed and one row per seed"):
        vs.hierarchical_bootstrap(diffs)


@pytest.mark.parametrize(
    ("at_or_below_zero", "excludes_zero"),
    [(249, True), (250, False), (251, False)],
    ids=["below-2.5%", "at-2.5%", "above-2.5%"],
)
@pytest.mark.parametrize("sign", [1, -1], ids=["lower-side", "upper-side"])
def test_interval_excludes_zero_exactly_when_p_is_below_5_percent(at_or_below_zero, excludes_zero, sign):
    # B = 10000: the 2.5% tail holds 250 resamples; p = 2 (1 + m) / 10001 < 0.05 exactly when m <= 249
    resampled = sign * np.concatenate([-np.ones(at_or_below_zero), np.ones(10_000 - at_or_below_zero)])
    low, high = vs.percentile_interval(resampled)
    assert (low > 0 or high < 0) == excludes_zero == (vs.bootstrap_p_value(resampled) < 0.05)


@pytest.mark.parametrize(
    ("p_values", "adjusted"),
    [
        # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; running max: 0.06 for 0.04
        pytest.param([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02], id="four"),
        pytest.param([0.5, 0.6], [1.0, 1.0], id="capped-at-one"),  # 2 x 0.5 = 1; max(1, 0.6) = 1
        pytest.param([0.03], [0.03], id="one-comparison-unchanged"),
        pytest.param([0.02, 0.02], [0.04, 0.04], id="ties"),  # 2 x 0.02, then max(0.04, 1 x 0.02)
        pytest.param([], [], id="none"),
    ],
)
def test_holm_adjustment_by_hand(p_values, adjusted):
    assert vs.holm_adjust(p_values) == pytest.approx(adjusted)


def test_decide_applies_holm_to_the_comparisons_with_a_p_value():
    def c(p, seeds=10):
        return {"variant": "v", "baseline": "plain", "p": p, "seeds": list(range(seeds))}
    # 0.01 and 0.04 of two tested: 0.02 and max(0.02, 0.04) = 0.04, both <= 0.05; None is untested
    decided = vs.decide([c(0.01), c(None), c(0.04)])
    assert [(d["p_holm"], d["differs"]) for d in decided] == [(0.02, True), (None, None), (0.04, True)]
    # each below 5% alone, not after Holm: 2 x 0.03 = 0.06, max(0.06, 0.04) = 0.06
    assert [d["differs"] for d in vs.decide([c(0.03), c(0.04)])] == [False, False]
    # fewer seeds than MIN_SEEDS_TO_DECIDE: adjusted, but no verdict
    assert [(d["p_holm"], d["differs"]) for d in vs.decide([c(0.01, seeds=3)])] == [(0.01, None)]


# ---- pairing rows --------------------------------------------------------------------------------


def test_final_rows_takes_the_last_after_evaluation():
    records = [
        {"step": 0, "tag": "before", "row": 0, "correct": 1, "reward": 2.0},
        {"step": 4, "tag": "periodic", "row": 0, "correct": 1, "reward": 2.0},
        {"step": 8, "tag": "after", "row": 0, "correct": 0, "reward": 1.0},
        {"step": 8, "tag": "after", "row": 1, "correct": 1, "reward": 2.0},
        {"step": 8, "tag": "after", "row": 0, "correct": 1, "reward": 2.0},  # resumed: evaluated again, wins
    ]
    assert vs.final_rows(records) == {0: 1, 1: 1}
    assert vs.final_rows(records, tag="before") == {0: 1}
    with pytest.raises(ValueError, match="'periodic'"):
        vs.final_rows(records[:1] + records[2:], tag="periodic")


def test_final_rows_needs_the_accuracy_reward():
    with pytest.raises(ValueError, match="log.accuracy_reward"):
        vs.final_rows([{"step": 1, "tag": "after", "row": 0, "reward": 0.5}])


def test_paired_row_diffs_in_row_order_and_refuses_other_rows():
    assert vs.paired_row_diffs({1: 1, 0: 0, 2: 1}, {0: 1, 1: 1, 2: 0}) == [-1, 0, 1]
    with pytest.raises(ValueError, match=r"only in the variant: \[3\], only in the baseline: \[2\]"):
        vs.paired_row_diffs({0: 1, 1: 0, 3: 1}, {0: 1, 1: 0, 2: 1})


def rows_with(correct: int, total: int = 50) -> dict[int, int]:
    return {i: int(i < correct) for i in range(total)}


def test_compare_pairs_by_seed():
    # 50 rows per seed; the variant gets 1, 2, 3 more rows right than plain at seeds 0, 1, 2: d_s = 0.02,
    # 0.04, 0.06, mean 0.04; six discordant rows in 150, all in the variant's favour
    plain = {0: rows_with(10), 1: rows_with(20), 2: rows_with(30), 3: rows_with(5)}  # seed 3: no variant run
    variant = {0: rows_with(11), 1: rows_with(22), 2: rows_with(33)}
    c = vs.compare(variant, plain)
    assert c["seeds"] == [0, 1, 2] and c["rows"] == [50, 50, 50]
    assert c["per_seed_diff"] == pytest.approx([0.02, 0.04, 0.06]) and c["mean_diff"] == pytest.approx(0.04)
    assert c["acc_variant"] == pytest.approx([0.22, 0.44, 0.66])
    # Every difference is >= 0, so no resample is below 0 and p = 2 (1 + #resamples at 0) / (B + 1). A slot
    # redraws no discordant row with chance (49/50)^50 = 0.36417, (48/50)^50 = 0.12989 or (47/50)^50 = 0.04533
    # by its seed; a resample is 0 when its three slots are: ((0.36417 + 0.12989 + 0.04533) / 3)^3 = 0.005812,
    # so p = 2 (1 + 58.1) / 10001 = 0.0118 (binomial sd of p: 0.0015)
    assert c["low"] >= 0 and c["low"] < 0.04 < c["high"]
    assert c["p"] == pytest.approx(0.0118, abs=0.005)


def test_compare_is_paired():
    # the variant gets exactly the baseline's rows right, whose accuracy varies widely by seed and row:
    # every paired difference is 0, so the interval is [0, 0] (unpaired, it would span the spread)
    plain = {0: rows_with(10), 1: rows_with(40), 2: rows_with(25)}
    c = vs.compare(dict(plain), plain, resamples=500)
    assert (c["low"], c["high"], c["p"]) == (0.0, 0.0, 1.0)


def test_compare_with_one_seed_has_no_interval():
    c = vs.compare({0: rows_with(12)}, {0: rows_with(10)})
    assert c["mean_diff"] == pytest.approx(0.04) and (c["low"], c["high"], c["p"]) == (None, None, None)


def test_compare_without_a_shared_seed_is_an_error():
    with pytest.raises(ValueError, match="no seed run by both"):
        vs.compare({1: rows_with(1)}, {0: rows_with(1)})


# ---- the table -----------------------------------------------------------------------------------


def comparison(diffs, low, high, p, p_holm, acc_baseline=(0.2, 0.2, 0.2)):
    return {"variant": "delta_proxy", "baseline": "plain", "seeds": [0, 1, 2], "rows": [50, 50, 50],
            "acc_variant": [a + d for a, d in zip(acc_baseline, diffs)], "acc_baseline": list(acc_baseline),
            "per_seed_diff": diffs, "mean_diff": sum(diffs) / len(diffs), "low": low, "high": high, "p": p,
            "p_holm": p_holm, "differs": None}


def test_table_row_not_different():
    row = {**comparison([0.02, 0.04, 0.06], -0.01, 0.09, 0.031, 0.062), "differs": False}
    assert cv.comparison_row(row) == (
        "| delta_proxy | plain | 0, 1, 2 | 0.240 vs 0.200 | +0.020, +0.040, +0.060 | +0.040 [-0.010, +0.090] "
        "| 0.0310 | 0.0620 | no |")


def test_table_row_different():
    row = {**comparison([0.10, 0.12, 0.14], 0.07, 0.17, 0.0002, 0.0006), "differs": True}
    assert cv.comparison_row(row) == (
        "| delta_proxy | plain | 0, 1, 2 | 0.320 vs 0.200 | +0.100, +0.120, +0.140 | +0.120 [+0.070, +0.170] "
        "| 0.0002 | 0.0006 | **yes** |")


def test_table_row_with_too_few_seeds_gives_no_verdict():
    assert cv.comparison_row(comparison([0.10, 0.12, 0.14], 0.07, 0.17, 0.0002, 0.0006)).endswith(
        "| 0.0002 | 0.0006 | undecided (3 seeds < 10) |")


def test_table_row_one_seed():
    row = {**comparison([0.02], None, None, None, None), "seeds": [0], "acc_variant": [0.22], "acc_baseline": [0.2]}
    assert cv.comparison_row(row) == (
        "| delta_proxy | plain | 0 | 0.220 vs 0.200 | +0.020 | +0.020 [no interval: one seed] | - | - | "
        "undecided (1 seeds < 10) |")


def test_the_header_says_what_decides_and_what_an_interval_with_zero_means():
    assert "Holm's adjusted p <= 0.05 over the comparisons of this table" in cv.COMPARISON_HEADER
    assert "does not show that the variants are equal" in cv.COMPARISON_HEADER
    assert "10000 resamples, bootstrap seed 0" in cv.COMPARISON_HEADER


# ---- selecting variants and their train.py arguments ---------------------------------------------


def test_only_adds_the_baselines_and_topd_needs_a_teacher(tmp_path):
    assert cv.selected_variants(["kl_cov"], None) == ["plain", "plain_mu2", "kl_cov"]
    assert "topd" not in cv.selected_variants(None, None)  # default: all that can run
    assert cv.selected_variants(None, tmp_path)[-1] == "topd"
    with pytest.raises(SystemExit, match="--only topd: needs --teacher-adapter"):
        cv.selected_variants(["topd", "pow3r"], None)


def test_train_args_pair_by_seed_and_only_plain_evaluates_before(tmp_path):
    plain = cv.train_args("plain", 2, 8, 200, None, ["train.learning_rate=1e-4"])
    assert plain == ["--recipe", "recipes/cpu-demo.yaml", "train.seed=2", "train.max_steps=8", "data.limit_eval=200",
                     "log.eval_before=true", "log.report_to=[]", "train.learning_rate=1e-4"]
    topd = cv.train_args("topd", 2, 8, 200, tmp_path, [])
    assert "log.eval_before=false" in topd and f"objective.teacher_adapter={tmp_path}" in topd


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--num-seeds", "1"], "--num-seeds 1: the interval resamples seeds", id="one-seed"),
        pytest.param(["--seeds", "0", "1"], "unrecognized arguments: --seeds", id="old-seed-list"),
        pytest.param(["--steps", "0"], "--steps 0: must be positive", id="zero-steps"),
        pytest.param(["--teacher-adapter", "missing-folder"], "no such folder", id="missing-teacher"),
    ],
)
def test_parse_args_refuses(argv, message, capsys):
    with pytest.raises(SystemExit):
        cv.parse_args(argv)
    assert message in capsys.readouterr().err


def test_parse_args_leaves_the_plan_to_the_comparison_folder():
    args = cv.parse_args([])
    assert (args.num_seeds, args.steps, args.eval_rows, args.overrides) == (None, None, None, [])
    assert cv.parse_args(["--num-seeds", "5", "--run-seeds", "3"]).run_seeds == [3]


def test_kl_cov_is_compared_with_its_control_then_with_plain():
    def result(name, seed, correct):
        return {"variant": name, "seed": seed, "steps": 8, "mean_step_s": 1.0, "wall_s": 10.0,
                "train_reward_last": 0.5, "acc_before": None, "acc_after": correct / 50,
                "rows": {str(i): c for i, c in rows_with(correct).items()}}
    results = [result(n, s, c) for n, c in [("plain", 10), ("plain_mu2", 12), ("kl_cov", 15)] for s in (0, 1)]
    summary = cv.summarize(results, [], {})
    pairs = [(c["variant"], c["baseline"], c["per_seed_diff"]) for c in summary["comparisons"]]
    assert pairs == [("plain_mu2", "plain", pytest.approx([0.04, 0.04])),
                     ("kl_cov", "plain_mu2", pytest.approx([0.06, 0.06])),
                     ("kl_cov", "plain", pytest.approx([0.1, 0.1]))]


# ---- orchestration: resuming, failures, the files written ----------------------------------------


def fake_runs(correct: dict, calls: list):
    """A stand-in for run_one (which trains for minutes): the scripted correct-row count of each (variant,
    seed), None for a run that fails; it saves result.json as run_one does."""
    def fake_run(name, seed, argv, run_dir, threads):
        calls.append((name, seed))
        if (name, seed) not in correct:
            return None  # e.g. a switch that does not validate yet
        result = {"variant": name, "seed": seed, "train_args": argv, "steps": 8, "mean_step_s": 2.0,
                  "wall_s": 30.0, "train_reward_last": 0.5, "acc_before": 0.1 if name == "plain" else None,
                  "acc_after": correct[name, seed] / 50,
                  "rows": {str(i): c for i, c in rows_with(correct[name, seed]).items()}}
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "result.json").write_text(json.dumps(result))
        return result
    return fake_run


def test_main_saves_per_run_skips_finished_ones_and_lists_failures(tmp_path, monkeypatch):
    calls = []
    correct = {("plain", 0): 10, ("plain", 1): 20, ("pow3r", 0): 11, ("pow3r", 1): 22}
    monkeypatch.setattr(cv, "run_one", fake_runs(correct, calls))
    argv = ["--out", str(tmp_path), "--num-seeds", "2", "--only", "pow3r", "overlong_mask"]
    summary = cv.main(argv)
    assert calls == [("plain", 0), ("plain", 1), ("pow3r", 0), ("pow3r", 1), ("overlong_mask", 0),
                     ("overlong_mask", 1)]
    assert summary["failed"] == [{"variant": "overlong_mask", "seed": 0}, {"variant": "overlong_mask", "seed": 1}]
    [c] = summary["comparisons"]
    assert (c["variant"], c["baseline"], c["per_seed_diff"]) == ("pow3r", "plain", pytest.approx([0.02, 0.04]))
    assert c["p_holm"] == c["p"]  # the only comparison with a p-value: Holm over one changes nothing
    assert summary["settings"]["bootstrap"] == {"resamples": 10_000, "seed": 0}
    plain_runs = summary["runs"][0]
    assert plain_runs["wall_s_total"] == 60.0 and plain_runs["acc_after"] == pytest.approx(0.3)
    md = (tmp_path / "variants.md").read_text()
    assert "| pow3r | plain | 0, 1 |" in md and "- overlong_mask seed 1" in md
    assert json.loads((tmp_path / "variants.json").read_text()) == json.loads(json.dumps(summary))
    assert json.loads((tmp_path / "comparison.json").read_text()) == {
        "recipe": cv.RECIPE, "seeds": [0, 1], "steps": 8, "eval_rows": 200, "overrides": []}

    calls.clear()
    cv.main(argv)
    assert calls == [("overlong_mask", 0), ("overlong_mask", 1)]  # finished runs are skipped, failed retried
    calls.clear()
    cv.main(["--out", str(tmp_path), "--only", "overlong_mask"])  # the plan comes from the folder
    assert calls == [("overlong_mask", 0), ("overlong_mask", 1)]
    with pytest.raises(SystemExit, match="use another --out"):
        cv.main([*argv, "--steps", "4"])

    calls.clear()  # --tabulate runs nothing, and tables what is finished: here both seeds of plain and pow3r
    table = cv.main(["--out", str(tmp_path), "--tabulate"])
    assert calls == [] and [(c["variant"], c["seeds"]) for c in table["comparisons"]] == [("pow3r", [0, 1])]


def test_run_seeds_share_the_work_and_must_be_the_comparisons(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cv, "run_one", fake_runs({("plain", s): 10 + s for s in range(3)}, calls))
    cv.main(["--out", str(tmp_path), "--num-seeds", "3", "--only", "plain", "--run-seeds", "2"])
    cv.main(["--out", str(tmp_path), "--only", "plain", "--run-seeds", "0", "1"])
    assert calls == [("plain", 2), ("plain", 0), ("plain", 1)]
    with pytest.raises(SystemExit, match=r"--run-seeds 3: not seeds of .* \(0 1 2, fixed in"):
        cv.main(["--out", str(tmp_path), "--only", "plain", "--run-seeds", "1", "3"])


def test_a_comparison_refuses_other_seeds(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cv, "run_one", fake_runs({("plain", s): 10 + s for s in range(3)}, calls))
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit, match=r"is a new comparison: give --num-seeds N"):
        cv.main(["--out", str(out), "--only", "plain"])
    cv.main(["--out", str(out), "--num-seeds", "3", "--only", "plain", "--run-seeds", "0"])
    with pytest.raises(SystemExit, match=r"cmp is a comparison of 3 seeds .*runs of seeds \[0\] have finished"):
        cv.main(["--out", str(out), "--num-seeds", "2", "--only", "plain"])
    cv.main(["--out", str(out), "--num-seeds", "3", "--only", "plain"])  # the same seeds: continues it
    with pytest.raises(SystemExit, match=r"every seed has finished runs.*another --out \(e\.g\. --out .*cmp-5seeds "
                                         r"--num-seeds 5\)"):
        cv.main(["--out", str(out), "--num-seeds", "5", "--only", "plain"])
    assert json.loads((out / "comparison.json").read_text())["seeds"] == [0, 1, 2]  # unchanged
    assert calls == [("plain", 0), ("plain", 1), ("plain", 2)]


def test_a_folder_with_runs_but_no_plan_is_not_adopted(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cv, "run_one", fake_runs({("plain", 0): 10}, calls))
    cv.main(["--out", str(tmp_path), "--num-seeds", "2", "--only", "plain", "--run-seeds", "0"])
    (tmp_path / "comparison.json").unlink()  # as a folder made before comparisons fixed their seeds
    with pytest.raises(SystemExit, match=r"holds finished runs \(seeds \[0\]\) but no comparison.json"):
        cv.main(["--out", str(tmp_path), "--num-seeds", "4", "--only", "plain"])
    assert not (tmp_path / "comparison.json").exists() and calls == [("plain", 0)]


# ---- the per-row file a real training run writes -------------------------------------------------


def test_training_writes_per_row_held_out_results(tiny_model_dir, tmp_path):
    summary = train.main(tiny_args(tiny_model_dir, tmp_path, 1, "log.accuracy_reward=digit_share"))
    records = [json.loads(line) for line in (tmp_path / "eval_rows.jsonl").read_text().splitlines()]
    assert [(r["step"], r["tag"], r["row"]) for r in records] == [(0, "before", i) for i in range(4)] + [
        (1, "after", i) for i in range(4)]
    after = records[4:]
    assert all(r["correct"] in (0, 1) for r in after)
    assert sum(r["correct"] for r in after) / 4 == pytest.approx(summary["after"]["eval/accuracy"])
    assert sum(r["reward"] for r in after) / 4 == pytest.approx(summary["after"]["eval/reward_mean"])
    assert vs.final_rows(records) == {r["row"]: r["correct"] for r in after}

    train.main([*tiny_args(tiny_model_dir, tmp_path, 1, "log.accuracy_reward=digit_share", "log.eval_before=false"),
                "--no-resume"])
    records = [json.loads(line) for line in (tmp_path / "eval_rows.jsonl").read_text().splitlines()]
    assert {r["tag"] for r in records} == {"after"} and len(records) == 4  # a fresh run keeps no stale rows
