"""Held-out evaluation during training: greedy completions scored by the recipe's rewards."""

from __future__ import annotations

import json
import logging
import time

import torch

from grpo.algorithm.shaping import weighted_total
from grpo.rollout import rewarding
from grpo.rollout.generation import generate
from grpo.rollout.sampling import SamplingParams
from grpo.runtime import distributed
from grpo.runtime.config import Config
from grpo.runtime.distributed import World
from grpo.training.prompts import PromptSet

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_rows(model, tokenizer, rows: list[dict], prompt_tokens: list[list[int]],
                  reward_fns: list[rewarding.WeightedReward], max_new_tokens: int,
                  stop_strings: tuple[str, ...], batch_prompts: int,
                  accuracy_reward: str | None, compiled: bool = False
                  ) -> tuple[dict, list[str], dict[str, torch.Tensor]]:
    """Greedy-decode one completion per row; report each reward's mean, the total and accuracy.

    Accuracy is the share of rows where `accuracy_reward` scores >= 1 (e.g. gsm8k_correctness).
    Returns (metrics, completion texts, per-row tensors): "reward" (N,) the weighted total, and
    "correct" (N,) 1.0 where the row counts as accurate, 0.0 where not (only with an accuracy reward).
    """
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_strings=stop_strings)
    matrices, texts = [], []
    was_training = model.training
    model.eval()
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start : start + batch_prompts]
        batch = generate(model, tokenizer, prompt_tokens[start : start + batch_prompts], 1, params,
                         compiled=compiled)
        columns = rewarding.expand_columns(chunk, 1)
        matrices.append(rewarding.reward_matrix(reward_fns, batch.texts, columns))
        texts.extend(batch.texts)
    model.train(was_training)
    matrix = torch.cat(matrices) if matrices else torch.empty(0, len(reward_fns))  # (N, K); a rank may get no rows
    weights = torch.tensor([r.weight for r in reward_fns])
    total = weighted_total(matrix, weights)
    out = {"eval/reward_mean": total.mean().item()}
    per_row = {"reward": total}  # (N,)
    for k, r in enumerate(reward_fns):
        out[f"eval/{r.name}"] = matrix[:, k].nan_to_num(0.0).mean().item()
    names = [r.name for r in reward_fns]
    if accuracy_reward in names:
        column = matrix[:, names.index(accuracy_reward)].nan_to_num(0.0)
        per_row["correct"] = (column >= 1.0).float()  # (N,)
        out["eval/accuracy"] = per_row["correct"].mean().item()
    out["eval/num_rows"] = len(rows)
    return out, texts, per_row


@torch.no_grad()
def evaluate_episodes(model, tokenizer, rows: list[dict], reward_fns: list[rewarding.WeightedReward], agents,
                      max_new_tokens: int, batch_episodes: int) -> tuple[dict, list[str], dict[str, torch.Tensor]]:
    """Greedy episodes of an agent (grpo/rollout/agent.py), one per row: each reward's mean, the total, the
    success rate (the environment's success, else its reward at env.success_threshold: also reported as
    accuracy), the share of tool calls that were valid and the turns taken."""
    from grpo.environments import Episode
    from grpo.rollout.agent import run_episodes

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    matrices, success, calls, invalid, turns = [], [], 0, 0, []
    was_training = model.training
    model.eval()
    for start in range(0, len(rows), batch_episodes):
        chunk = rows[start : start + batch_episodes]
        episodes = agents.start(chunk)
        played = run_episodes(model, tokenizer, episodes, 1, params, list(range(start, start + len(chunk))),
                              agents.settings)
        env = [e.reward() if isinstance(e, Episode) else None for e in episodes]
        counts = [(e.counts["calls"], e.counts["invalid"]) if isinstance(e, Episode) else (None, None)
                  for e in episodes]
        matrix = rewarding.reward_matrix(reward_fns, played.conversations, {
            **rewarding.expand_columns(chunk, 1), "env_reward": env, "env_calls": [c for c, _ in counts],
            "env_invalid": [i for _, i in counts]})
        matrices.append(matrix)
        totals = weighted_total(matrix, torch.tensor([r.weight for r in reward_fns]))
        for episode, total in zip(episodes, totals.tolist()):
            success.append(float(agents.success(episode, total)))
            if isinstance(episode, Episode):
                calls, invalid = calls + episode.counts["calls"], invalid + episode.counts["invalid"]
                turns.append(episode.counts["turns"])
    model.train(was_training)
    matrix = torch.cat(matrices) if matrices else torch.empty(0, len(reward_fns))
    total = weighted_total(matrix, torch.tensor([r.weight for r in reward_fns]))
    correct = torch.tensor(success)
    out = {"eval/reward_mean": total.mean().item(), "eval/accuracy": correct.mean().item(),
           "eval/success_rate": correct.mean().item(),
           "eval/valid_call_rate": (calls - invalid) / calls if calls else float("nan"),
           "eval/turns": sum(turns) / len(turns) if turns else float("nan"), "eval/num_rows": len(rows)}
    for k, r in enumerate(reward_fns):
        out[f"eval/{r.name}"] = matrix[:, k].nan_to_num(0.0).mean().item()
    return out, [], {"reward": total, "correct": correct}


def run_eval(backend, tokenizer, cfg: Config, prompts: PromptSet, reward_fns: list[rewarding.WeightedReward],
             world: World, agents=None) -> tuple[dict, list[dict]]:
    """Greedy held-out evaluation; each rank decodes its share of the rows (an agent plays its episodes),
    the means are combined.

    Returns (metrics, one record per held-out row in row order, on every rank): {"row": index in the
    held-out set, "correct": 0/1 (only with log.accuracy_reward), "reward": the weighted total}.
    Per-row results let a comparison pair two runs row by row (scripts/compare_variants.py).
    """
    if not len(prompts):
        return {}, []
    started = time.perf_counter()
    share = prompts.subset(distributed.rank_share(len(prompts), world))
    max_new = cfg.log.eval_max_new_tokens or cfg.rollout.max_new_tokens
    with backend.generation() as policy:
        if agents is not None:
            result, _, per_row = evaluate_episodes(policy, tokenizer, share.rows, reward_fns, agents, max_new,
                                                   cfg.log.eval_batch_size)
        else:
            result, _, per_row = evaluate_rows(
                policy, tokenizer, share.rows, share.tokens, reward_fns, max_new, tuple(cfg.rollout.stop_strings),
                cfg.log.eval_batch_size, cfg.log.accuracy_reward, cfg.rollout.compile,
            )
    result = {**distributed.weighted_mean(result, world, weight=len(share)), "eval/num_rows": len(prompts)}
    result["eval/time_s"] = time.perf_counter() - started
    per_row = distributed.gather_rows(per_row, world)  # rank shares are contiguous: rank order is row order
    assert per_row["reward"].shape == (len(prompts),), (per_row["reward"].shape, len(prompts))
    records = [{"row": i, **({"correct": int(per_row["correct"][i])} if "correct" in per_row else {}),
                "reward": float(per_row["reward"][i])} for i in range(len(prompts))]
    return result, records


def log_eval(result: dict, step: int, tag: str) -> None:
    log.info("eval (%s, step %d): %s", tag, step, json.dumps({k: round(v, 4) for k, v in result.items()}))
