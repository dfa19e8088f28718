"""DistIL (objective.name=distil): the policy itself, shown rich feedback in its prompt, is the teacher.

The feedback (grpo/research/distil_rich_feedback.py has the method): a reference solution for rows
that have one (GSM8K, the synthetic task, multi-hop), the failing test and error of each completion
for code rows (the code sandbox's feedback). The sandbox's detail quotes the program's own exception
messages (bounded to 1,000 characters): text the policy wrote reaches the teacher's prompt, never
anything else. Frozen before the update: the teacher's top-K distribution at every position of each
completion. The loss: the forward cross-entropy to it, plus the sequence term as per-token
advantages through the recipe's policy loss.
"""

from __future__ import annotations

import torch

from data.prompts import build_prompt
from grpo.algorithm.loss import policy_loss
from grpo.objectives.base import Objective, loss_settings
from grpo.research.distil_rich_feedback import forward_cross_entropy, sequence_advantages
from grpo.rollout.batch import RolloutBatch
from grpo.rollout.logprobs import LogProbPlan, micro_batches, pass_device
from grpo.runtime.config import ConfigError


class DistilRichFeedback(Objective):
    name = "distil"

    def __init__(self, loss, max_new_tokens: int, tokenizer, prompt: tuple[int, str], rows_per_micro_batch: int,
                 top_k: int, future_weight: float, code_feedback):
        super().__init__(loss, max_new_tokens)
        self.tokenizer, self.prompt = tokenizer, prompt  # prompt: (n_shot, style) to rebuild the teacher's
        self.rows_per_micro_batch, self.top_k, self.future_weight = rows_per_micro_batch, top_k, future_weight
        self.code_feedback = code_feedback

    @classmethod
    def from_config(cls, cfg, setup) -> "DistilRichFeedback":
        check_feedback_rows(setup.train_rows, cfg.data.task)
        o = cfg.objective
        return cls(loss_settings(cfg), cfg.rollout.max_new_tokens, setup.tokenizer,
                   (cfg.data.n_shot, cfg.data.prompt_style), cfg.train.batch_size, o.top_k, o.future_weight,
                   code_feedback_for(cfg))

    def prepare(self, logprobs, batch, rows, plan):
        per_row = [row for row in rows for _ in range(batch.group_size)]
        notes = feedback_notes(per_row, batch.texts, self.code_feedback)
        shown = feedback_batch(batch, per_row, notes, *self.prompt, self.tokenizer)
        ids, probs = teacher_distribution(logprobs, shown, plan, self.rows_per_micro_batch, self.top_k)
        return {"teacher_ids": ids, "teacher_probs": probs}  # (B, T, K) each

    def pass_options(self, micro) -> dict:
        return {"gather_ids": micro.frozen["teacher_ids"]}

    def per_token_loss(self, out, old_logp, micro, part):
        mask = micro.loss_mask
        local = forward_cross_entropy(out.gathered, micro.frozen["teacher_probs"])  # (b, T), with gradient
        advantages = sequence_advantages(local, mask, part.group_size, self.future_weight)  # (b, T)
        result = policy_loss(self.loss.policy, out.logp, old_logp, advantages, mask, self.loss.clip, micro.selected)
        result.per_token = local + result.per_token
        result.indicators["distil/cross_entropy"] = local.detach()
        return result


SOLUTION_NOTE = "(A worked solution to check against, for the grader only:\n{solution}\n)"
CODE_NOTE = "An earlier attempt at this task was run against its tests. Result:\n{detail}"


def check_feedback_rows(rows: list[dict], task: str) -> None:
    """DistIL needs rich feedback: every row a reference `solution` or code `test`s. Raises naming the fix."""
    for index, row in enumerate(rows):
        if not row.get("solution") and not row.get("test"):
            raise ConfigError(
                f"objective.name=distil needs rich feedback, but training row {index} of data.task={task!r} has "
                "neither a reference 'solution' nor code 'test's; add a 'solution' column to the rows or use "
                "objective.name=grpo")


def feedback_notes(rows: list[dict], completions: list[str], code_feedback) -> list[str]:
    """Per completion row: the note the teacher sees. rows: each completion's row (B entries).

    code_feedback(completions, rows) -> list[str | None]: the sandbox's verdict for code rows.
    """
    notes: list[str | None] = [None] * len(rows)
    code_rows = [i for i, row in enumerate(rows) if row.get("test")]
    if code_rows:
        details = code_feedback([completions[i] for i in code_rows], [rows[i] for i in code_rows])
        for i, detail in zip(code_rows, details):
            notes[i] = CODE_NOTE.format(detail=detail)
    for i, row in enumerate(rows):
        if notes[i] is None:
            notes[i] = SOLUTION_NOTE.format(solution=row["solution"])
    return notes


def code_feedback_for(cfg):
    """(completions, rows) -> the code sandbox's verdict per completion, run with the recipe's
    code_execution reward options (its limits and isolation setting), for code rows' teacher notes."""
    options = next((dict(spec.options) for spec in cfg.rewards if spec.name == "code_execution"), {})
    limits = {k: options[k] for k in ("timeout_s", "memory_mb", "max_workers", "allow_unisolated") if k in options}

    def run(completions: list[str], rows: list[dict]) -> list[str | None]:
        from rewards.code_execution import code_feedback

        return code_feedback(completions, [r.get("test") for r in rows], [r.get("entry_point") for r in rows],
                             [r.get("prompt", "") for r in rows], **limits)

    return run


def teacher_prompt(row: dict, note: str, n_shot: int, style: str, tokenizer) -> str:
    """The row's prompt with the note in it: inside the question where the row has one (rebuilt
    with the recipe's n-shot and style), else the note as comment lines before a code prompt."""
    if row.get("question"):
        return build_prompt(f"{row['question']}\n\n{note}", n_shot, style, tokenizer)
    comment = "\n".join(f"# {line}" for line in note.splitlines())
    return f"{comment}\n{row['prompt']}"


def with_prompts(batch: RolloutBatch, prompts: list[list[int]], group_size: int, pad_id: int) -> RolloutBatch:
    """`batch`'s completions under other prompts: one per group (group_size = G) or one per row (1).
    Prompts left-padded, as the sampler's."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, tokens in enumerate(prompts):
        ids[i, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
        mask[i, width - len(tokens):] = 1
    return RolloutBatch(ids, mask, batch.completion_ids, batch.completion_mask, batch.truncated, batch.texts,
                        group_size, batch.token_entropy, batch.token_certainty)


def feedback_batch(batch: RolloutBatch, rows: list[dict], notes: list[str], n_shot: int, style: str,
                   tokenizer) -> RolloutBatch:
    """The rollout's completions under the teacher's prompts. rows, notes: one per completion row.
    Where every completion of a group has the same note (a reference solution), one prompt per group."""
    g = batch.group_size
    per_group = all(len(set(notes[i:i + g])) == 1 for i in range(0, len(notes), g))
    chosen = range(0, len(notes), g) if per_group else range(len(notes))
    add_special = style == "plain"
    prompts = [tokenizer(teacher_prompt(rows[i], notes[i], n_shot, style, tokenizer),
                         add_special_tokens=add_special)["input_ids"] for i in chosen]
    return with_prompts(batch, prompts, g if per_group else 1, tokenizer.pad_token_id)


@torch.no_grad()
def teacher_distribution(logprobs, batch: RolloutBatch, plan: LogProbPlan, rows_per_micro_batch: int,
                         top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-K tokens and renormalized probabilities at each completion position,
    (B, T, K) each, micro-batch by micro-batch. logprobs: the policy's log-prob pass (or its DeepSpeed engine)."""
    rows, width = batch.completion_ids.shape
    device = pass_device(logprobs)
    ids = torch.zeros((rows, width, top_k), dtype=torch.long, device=device)
    probs = torch.zeros((rows, width, top_k), device=device)
    prompts_per_micro = max(1, rows_per_micro_batch // batch.group_size)
    for row, part in micro_batches(batch, prompts_per_micro):
        out = logprobs(part, plan.temperature, plan.shared_prefix, top_k=top_k)
        n, w = out.topk_ids.shape[:2]
        ids[row:row + n, :w], probs[row:row + n, :w] = out.topk_ids, out.topk_probs.float()
    return ids, probs
