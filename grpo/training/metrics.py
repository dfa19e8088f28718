"""Per-step statistics computed from the rollout tensors (pure functions, for logging)."""

from __future__ import annotations

import math

import torch

from grpo.algorithm.groups import has_spread


def _nan_stats(values: torch.Tensor) -> tuple[float, float]:
    valid = values[~torch.isnan(values)]
    if valid.numel() == 0:
        return float("nan"), float("nan")
    std = valid.std().item() if valid.numel() > 1 else 0.0
    return valid.mean().item(), std


def reward_metrics(names: list[str], matrix: torch.Tensor, total: torch.Tensor, group_size: int) -> dict:
    """Mean/std of each reward (B, K) and of the total (B,), and the share of groups with no spread."""
    out = {}
    for k, name in enumerate(names):
        out[f"reward/{name}/mean"], out[f"reward/{name}/std"] = _nan_stats(matrix[:, k])
    out["reward/total/mean"], out["reward/total/std"] = _nan_stats(total)
    out["groups/zero_spread_frac"] = (~has_spread(total, group_size)).float().mean().item()
    return out


def completion_metrics(mask: torch.Tensor, truncated: torch.Tensor) -> dict:
    """Completion lengths (B, T mask) and truncation rate (B,)."""
    lengths = mask.sum(1)
    return {
        "completion/length_mean": lengths.mean().item(),
        "completion/length_max": lengths.max().item(),
        "completion/truncated_frac": truncated.float().mean().item(),
    }


def episode_metrics(stats: torch.Tensor) -> dict:
    """Per-episode means of an agent step's (B, 4) turns, tool calls, invalid calls, failed starts."""
    started = stats[:, 3] == 0
    ran = stats[started] if started.any() else stats[:0]
    mean = (lambda column: ran[:, column].mean().item()) if ran.shape[0] else (lambda column: float("nan"))
    calls = ran[:, 1].sum()
    return {"env/turns": mean(0), "env/tool_calls": mean(1), "env/invalid_calls": mean(2),
            "env/valid_call_rate": ((calls - ran[:, 2].sum()) / calls).item() if calls > 0 else float("nan"),
            "env/failed_starts": stats[:, 3].sum().item()}


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return ((values * mask).sum() / mask.sum().clamp(min=1)).item()


def device_memory() -> dict:
    """Peak accelerator memory of this process so far, in GiB (nothing on CPU)."""
    if not torch.cuda.is_available():
        return {}
    return {"memory/peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "memory/peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}


def step_record(reward_names: list[str], rows: dict[str, torch.Tensor], scalars: dict, group_size: int) -> dict:
    """One step's log record from the rows of all ranks (matrix, total, mask, truncated, entropy,
    certainty) and the scalars already averaged over ranks."""
    return {
        **reward_metrics(reward_names, rows["matrix"], rows["total"], group_size),
        **completion_metrics(rows["mask"], rows["truncated"]),
        **scalars,
        "entropy": masked_mean(rows["entropy"], rows["mask"]),
        "self_certainty": masked_mean(rows["certainty"], rows["mask"]),
        "tokens_per_s": rows["mask"].sum().item() / scalars["time/step_s"],
    }


def completion_rows(rollout, advantages: torch.Tensor, reward_names: list[str], limit: int) -> list[dict]:
    """The first whole groups of a step's rollout, at least `limit` completions, for the run's log:
    {prompt, completion, rewards: {name: score or None}, total, advantage} each; agent rows add `sampled`,
    the text the model wrote in every turn as sampled (a malformed tool call is only there: the
    conversation's assistant messages hold the calls that could be read)."""
    g = rollout.batch.group_size
    rows = min(-(-limit // g) * g, len(rollout.batch.texts))
    completions = rollout.completions if rollout.completions is not None else rollout.batch.texts
    scores = rollout.scores[:rows].tolist()
    totals, advs = rollout.total[:rows].tolist(), advantages[:rows].tolist()
    logged = [{"prompt": rollout.prompts[row // g], "completion": completions[row],
               "rewards": {name: (None if math.isnan(s) else s) for name, s in zip(reward_names, scores[row])},
               "total": totals[row], "advantage": advs[row]} for row in range(rows)]
    for row, record in enumerate(logged):
        if isinstance(record["completion"], list):  # a conversation
            record["sampled"] = rollout.batch.texts[row]
    return logged
