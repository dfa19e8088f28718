"""Held-out evaluation during training: greedy completions scored by the recipe's rewards."""

from __future__ import annotations

import torch

from grpo import scoring
from grpo.rollout import SamplingParams, generate


@torch.no_grad()
def evaluate_rows(model, tokenizer, rows: list[dict], prompt_tokens: list[list[int]],
                  reward_fns: list[scoring.WeightedReward], max_new_tokens: int,
                  stop_strings: tuple[str, ...], batch_prompts: int,
                  accuracy_reward: str | None) -> dict:
    """Greedy-decode one completion per row; report each reward's mean, the total and accuracy.

    Accuracy is the share of rows where `accuracy_reward` scores >= 1 (e.g. gsm8k_correctness).
    """
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_strings=stop_strings)
    matrices, texts = [], []
    was_training = model.training
    model.eval()
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start : start + batch_prompts]
        batch = generate(model, tokenizer, prompt_tokens[start : start + batch_prompts], 1, params)
        columns = scoring.expand_columns(chunk, 1)
        matrices.append(scoring.score(reward_fns, batch.texts, columns))
        texts.extend(batch.texts)
    model.train(was_training)
    matrix = torch.cat(matrices) if matrices else torch.empty(0, len(reward_fns))  # (N, K); a rank may get no rows
    weights = torch.tensor([r.weight for r in reward_fns])
    total = scoring.weighted_total(matrix, weights)
    out = {"eval/reward_mean": total.mean().item()}
    for k, r in enumerate(reward_fns):
        out[f"eval/{r.name}"] = matrix[:, k].nan_to_num(0.0).mean().item()
    names = [r.name for r in reward_fns]
    if accuracy_reward in names:
        column = matrix[:, names.index(accuracy_reward)].nan_to_num(0.0)
        out["eval/accuracy"] = (column >= 1.0).float().mean().item()
    out["eval/num_rows"] = len(rows)
    return out, texts
