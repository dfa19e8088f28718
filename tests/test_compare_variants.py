"""scripts/variant_stats.py against hand-computed values; scripts/compare_variants.py's pairing, table,
resuming and variant selection; the per-row held-out file a real tiny training run writes."""

import json
import math

import pytest

import train
from scripts import compare_variants as cv
from scripts import variant_stats as vs
from tests.helpers import train_with_digit_reward  # noqa: F401  (registers "digit_share")
from tests.test_train import tiny_args

# ---- t quantiles and the two intervals -----------------------------------------------------------


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)])
def test_t_quantile_table(df, expected):
    assert vs.t_quantile_975(df) == expected


def test_t_quantile_beyond_the_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (31, 45, 100, 1000):
        assert vs.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)


def test_t_quantile_needs_two_observations():
    with pytest.raises(ValueError, match="df=0"):
        vs.t_quantile_975(0)


def test_seed_interval_three_seeds_not_significant():
    # d = 0.02, 0.04, 0.06: mean 0.04; sd = sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02;
    # half-width = t(0.975, 2) * sd / sqrt(3) = 4.3027 * 0.02 / 1.7321 = 0.04968 -> [-0.0097, 0.0897]
    ci = vs.seed_interval([0.02, 0.04, 0.06])
    assert ci.mean == pytest.approx(0.04)
    assert ci.half_width == pytest.approx(0.0496833, abs=1e-6)
    assert ci.low == pytest.approx(-0.0096833, abs=1e-6) and ci.n == 3
    assert not ci.excludes_zero


@pytest.mark.parametrize("sign", [1, -1], ids=["better", "worse"])
def test_seed_interval_three_seeds_significant(sign):
    # d = 0.10, 0.12, 0.14: mean 0.12, sd 0.02, the same half-width 0.04968 -> [0.0703, 0.1697]
    ci = vs.seed_interval([sign * 0.10, sign * 0.12, sign * 0.14])
    assert ci.mean == pytest.approx(sign * 0.12)
    assert sorted([ci.low, ci.high]) == pytest.approx(sorted([sign * 0.0703167, sign * 0.1696833]), abs=1e-6)
    assert ci.excludes_zero


def test_seed_interval_edge_cases():
    one = vs.seed_interval([0.05])  # one seed: no spread to estimate, so no interval and never significant
    assert one.half_width == math.inf and not one.excludes_zero
    assert one.as_dict() == {"mean": 0.05, "half_width": None, "low": None, "high": None, "n": 1}
    flat = vs.seed_interval([0.0, 0.0, 0.0])  # no difference at all: [0, 0] contains 0
    assert flat.half_width == 0.0 and not flat.excludes_zero
    with pytest.raises(ValueError, match="no per-seed differences"):
        vs.seed_interval([])


def test_row_interval_normal_approximation():
    # d = 1, 0, 0, -1, 1, 0: mean 1/6 = 0.16667; squared deviations 2 x 0.69444 + 3 x 0.02778 + 1.36111
    # = 2.83333, / 5 = 0.56667, sd 0.75277; half-width 1.959964 x 0.75277 / sqrt(6) = 0.60233
    ci = vs.row_interval([1, 0, 0, -1, 1, 0])
    assert ci.mean == pytest.approx(1 / 6)
    assert ci.half_width == pytest.approx(0.602333, abs=1e-6)
    assert not ci.excludes_zero


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


def test_compare_pairs_by_seed_and_pools_rows():
    # 50 rows per seed; the variant gets 1, 2, 3 more rows right than plain at seeds 0, 1, 2:
    # d_s = 0.02, 0.04, 0.06 (the seed interval above: not significant). The 150 pooled row
    # differences are six 1s and 144 0s: mean 0.04, sd = sqrt((6 x 0.96^2 + 144 x 0.04^2) / 149)
    # = 0.196616, half-width 1.959964 x 0.196616 / sqrt(150) = 0.031464: the row interval alone
    # would call it significant, which is why it does not decide.
    plain = {0: rows_with(10), 1: rows_with(20), 2: rows_with(30), 3: rows_with(5)}  # seed 3: no variant run
    variant = {0: rows_with(11), 1: rows_with(22), 2: rows_with(33)}
    c = vs.compare(variant, plain)
    assert c["seeds"] == [0, 1, 2]
    assert c["per_seed_diff"] == pytest.approx([0.02, 0.04, 0.06])
    assert c["acc_variant"] == pytest.approx([0.22, 0.44, 0.66])
    assert c["seed_ci"]["half_width"] == pytest.approx(0.0496833, abs=1e-6) and not c["significant"]
    assert c["row_ci"]["mean"] == pytest.approx(0.04) and c["row_ci"]["n"] == 150
    assert c["row_ci"]["half_width"] == pytest.approx(0.031464, abs=1e-6) and c["row_ci"]["low"] > 0


def test_compare_without_a_shared_seed_is_an_error():
    with pytest.raises(ValueError, match="no seed run by both"):
        vs.compare({1: rows_with(1)}, {0: rows_with(1)})


# ---- the table -----------------------------------------------------------------------------------


def comparison(diffs, acc_baseline=(0.2, 0.2, 0.2)):
    return {"variant": "delta_proxy", "baseline": "plain", "seeds": [0, 1, 2],
            "acc_variant": [a + d for a, d in zip(acc_baseline, diffs)], "acc_baseline": list(acc_baseline),
            "per_seed_diff": diffs, "seed_ci": vs.seed_interval(diffs).as_dict(),
            "row_ci": vs.row_interval([1, 0, 0, -1, 1, 0]).as_dict(),
            "significant": vs.seed_interval(diffs).excludes_zero}


def test_table_row_not_significant():
    assert cv.comparison_row(comparison([0.02, 0.04, 0.06])) == (
        "| delta_proxy | plain | 0, 1, 2 | 0.240 vs 0.200 | +0.020, +0.040, +0.060 | +0.040 [-0.010, +0.090] "
        "| no | +0.167 [-0.436, +0.769] (6 rows) |")


def test_table_row_significant():
    assert cv.comparison_row(comparison([0.10, 0.12, 0.14])) == (
        "| delta_proxy | plain | 0, 1, 2 | 0.320 vs 0.200 | +0.100, +0.120, +0.140 | +0.120 [+0.070, +0.170] "
        "| **yes** | +0.167 [-0.436, +0.769] (6 rows) |")


def test_the_header_says_which_interval_decides():
    assert "Significance is decided by the seed-level 95% interval" in cv.COMPARISON_HEADER
    assert "significant (seed CI excludes 0)" in cv.COMPARISON_HEADER


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


def test_parse_args_refuses_one_seed_and_a_missing_teacher(tmp_path):
    with pytest.raises(SystemExit):
        cv.parse_args(["--seeds", "0", "0"])
    with pytest.raises(SystemExit):
        cv.parse_args(["--teacher-adapter", str(tmp_path / "missing")])
    assert cv.parse_args([]).seeds == [0, 1, 2] and cv.parse_args([]).eval_rows == 200
    assert cv.parse_args(["--seeds", "2", "--only", "pow3r"]).seeds == [2]  # one share of a split comparison


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


def test_main_saves_per_run_skips_finished_ones_and_lists_failures(tmp_path, monkeypatch):
    calls = []
    correct = {("plain", 0): 10, ("plain", 1): 20, ("pow3r", 0): 11, ("pow3r", 1): 22}

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

    monkeypatch.setattr(cv, "run_one", fake_run)
    argv = ["--out", str(tmp_path), "--seeds", "0", "1", "--only", "pow3r", "overlong_mask"]
    summary = cv.main(argv)
    assert calls == [("plain", 0), ("plain", 1), ("pow3r", 0), ("pow3r", 1), ("overlong_mask", 0),
                     ("overlong_mask", 1)]
    assert summary["failed"] == [{"variant": "overlong_mask", "seed": 0}, {"variant": "overlong_mask", "seed": 1}]
    [c] = summary["comparisons"]
    assert (c["variant"], c["baseline"], c["per_seed_diff"]) == ("pow3r", "plain", pytest.approx([0.02, 0.04]))
    plain_runs = summary["runs"][0]
    assert plain_runs["wall_s_total"] == 60.0 and plain_runs["acc_after"] == pytest.approx(0.3)
    md = (tmp_path / "variants.md").read_text()
    assert "| pow3r | plain | 0, 1 |" in md and "- overlong_mask seed 1" in md
    assert json.loads((tmp_path / "variants.json").read_text()) == json.loads(json.dumps(summary))

    calls.clear()
    cv.main(argv)
    assert calls == [("overlong_mask", 0), ("overlong_mask", 1)]  # finished runs are skipped, failed retried
    with pytest.raises(SystemExit, match="use another --out"):
        cv.main([*argv, "--steps", "4"])

    calls.clear()  # --tabulate runs nothing, and tables what is finished: here both seeds of plain and pow3r
    table = cv.main(["--out", str(tmp_path), "--seeds", "0", "1", "--tabulate"])
    assert calls == [] and [(c["variant"], c["seeds"]) for c in table["comparisons"]] == [("pow3r", [0, 1])]


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
