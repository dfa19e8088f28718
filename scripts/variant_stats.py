"""Paired statistics for scripts/compare_variants.py: is a variant's held-out accuracy different from
its baseline's, beyond the noise of a few short training runs?

Each variant runs with several seeds, and each seed is paired with the baseline run of the same seed
(same prompts, same sampling seeds at step 1, same held-out rows). Two 95% intervals for the mean
accuracy difference variant - baseline:

- seed level (decides significance): d_s = acc_variant(s) - acc_baseline(s) per seed, the mean of
  the d_s with a Student-t interval, df = seeds - 1 and the Bessel-corrected sd. Training noise
  (which prompts, which samples, where the short run lands) differs from seed to seed and dominates,
  so only this interval counts a seed as one observation of it.
- row level (for reference): the per-row differences correct_variant - correct_baseline of every
  paired (seed, row), pooled over seeds, with the normal approximation mean +- 1.96 sd / sqrt(n)
  (Bessel-corrected sd). It treats rows as independent and so only measures which held-out rows were
  drawn; it is narrower than the seed interval and must not be read as significance.

A difference is significant when the seed-level interval excludes 0. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Student-t 0.975 quantiles, df 1..30 (scipy.stats.t.ppf(0.975, df), 4 decimals); beyond: _t_beyond_table.
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.959964  # standard normal 0.975 quantile


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"df={df}: a t interval needs at least 2 observations (df >= 1)")
    if df <= len(T_975):
        return T_975[df - 1]
    # Cornish-Fisher expansion of t around the normal quantile (Abramowitz & Stegun 26.7.5);
    # off by < 1e-4 at df = 31, less beyond
    z = Z_975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class Interval:
    """mean +- half_width over n observations (half_width is inf when n < 2: no interval)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        finite = math.isfinite(self.half_width)
        return {"mean": self.mean, "half_width": self.half_width if finite else None,
                "low": self.low if finite else None, "high": self.high if finite else None, "n": self.n}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and Bessel-corrected standard deviation (n >= 2)."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _interval(diffs: list[float], quantile, empty: str) -> Interval:
    """mean +- quantile(n) * sd / sqrt(n) of `diffs`; no interval (inf) for one value."""
    if not diffs:
        raise ValueError(empty)
    if len(diffs) == 1:
        return Interval(diffs[0], math.inf, 1)
    mean, sd = _mean_sd(diffs)
    return Interval(mean, quantile(len(diffs)) * sd / math.sqrt(len(diffs)), len(diffs))


def seed_interval(diffs: list[float]) -> Interval:
    """95% t interval (df = n - 1) for the mean of per-seed differences d_s."""
    return _interval(diffs, lambda n: t_quantile_975(n - 1), "seed_interval: no per-seed differences")


def row_interval(diffs: list[float]) -> Interval:
    """95% normal-approximation interval for the mean of paired per-row differences."""
    return _interval(diffs, lambda n: Z_975, "row_interval: no paired rows")


def final_rows(records: list[dict], tag: str = "after") -> dict[int, int]:
    """{row index: correct 0/1} of a run's last `tag` evaluation, from eval_rows.jsonl records.

    A run resumed after its final evaluation repeats it: the last record of each row wins.
    """
    tagged = [r for r in records if r["tag"] == tag]
    if not tagged:
        raise ValueError(f"no {tag!r} evaluation in the per-row records")
    if any(r.get("correct") is None for r in tagged):
        raise ValueError("per-row records without 'correct': set log.accuracy_reward to a reward of the recipe")
    last_step = max(r["step"] for r in tagged)
    return {r["row"]: int(r["correct"]) for r in tagged if r["step"] == last_step}


def paired_row_diffs(variant: dict[int, int], baseline: dict[int, int]) -> list[int]:
    """correct_variant - correct_baseline per held-out row, in row order; both must hold the same rows."""
    if variant.keys() != baseline.keys():
        only_v, only_b = sorted(variant.keys() - baseline.keys()), sorted(baseline.keys() - variant.keys())
        raise ValueError(f"the runs evaluated different rows (only in the variant: {only_v[:5]}, only in the "
                         f"baseline: {only_b[:5]}); run both with the same data.limit_eval and train.seed")
    return [variant[i] - baseline[i] for i in sorted(variant)]


def accuracy(rows: dict[int, int]) -> float:
    return sum(rows.values()) / len(rows)


def compare(variant: dict[int, dict[int, int]], baseline: dict[int, dict[int, int]]) -> dict:
    """Paired comparison over the seeds both have: {seed: {row: correct}} for the variant and its baseline.

    Returns seeds, per-seed accuracies and differences d_s, the seed-level interval (decides
    `significant`) and the row-level interval pooled over seeds.
    """
    seeds = sorted(variant.keys() & baseline.keys())
    if not seeds:
        raise ValueError("compare: no seed run by both the variant and its baseline")
    per_seed = [accuracy(variant[s]) - accuracy(baseline[s]) for s in seeds]
    rows = [d for s in seeds for d in paired_row_diffs(variant[s], baseline[s])]
    by_seed = seed_interval(per_seed)
    return {
        "seeds": seeds,
        "acc_variant": [accuracy(variant[s]) for s in seeds],
        "acc_baseline": [accuracy(baseline[s]) for s in seeds],
        "per_seed_diff": per_seed,
        "seed_ci": by_seed.as_dict(),
        "row_ci": row_interval(rows).as_dict(),
        "significant": by_seed.excludes_zero,
    }
