"""The teachers of the distillation objectives (train.objective):

- opd: a frozen model (distill.teacher, with distill.teacher_adapter merged in) that scores the
  student's sampled tokens (grpo/research/distillation.py). Every rank holds a whole copy on its
  device, also under ZeRO-3: it takes no gradient and no optimizer state, and its forward must not
  wait on the other ranks' partitions.
- distil: the policy itself, shown rich feedback in its prompt (grpo/research/distil.py): a
  reference solution for rows that have one (GSM8K, the synthetic task, multi-hop), the failing test
  and error of each completion for code rows (the code sandbox's feedback). The sandbox's detail
  quotes the program's own exception messages (bounded to 1,000 characters): text the policy wrote
  reaches the teacher's prompt, never anything else.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from data.prompts import build_prompt
from grpo import speedups
from grpo.rollout.batch import RolloutBatch
from grpo.rollout.logprobs import CompletionScorer
from grpo.runtime.config import Config, ConfigError
from grpo.runtime.model import load_model_and_tokenizer
from grpo.training.update import ScoringPlan, micro_batches

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _outside_zero3():
    """Load whole, not into ZeRO-3 partitions: transformers partitions at load time while a
    DeepSpeed ZeRO-3 config is registered (HfDeepSpeedConfig); unregister it for the duration."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def teacher_device(device: torch.device | None, local_rank: int) -> torch.device:
    """This rank's device for a replicated model (the launch's device is None under ZeRO-3)."""
    if device is not None:
        return device
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def load_teacher(cfg: Config, device: torch.device, student_tokenizer) -> CompletionScorer:
    """The opd teacher as a scorer: distill.teacher (else the student's base model), with
    distill.teacher_adapter merged in, frozen, in the recipe's dtype, on `device`.
    A teacher whose vocabulary differs from the student's is an error (its log-probs would be of
    other tokens)."""
    ds, m = cfg.distill, cfg.model
    name, gguf = (ds.teacher, None) if ds.teacher else (m.name, m.gguf_file)
    adapter = Path(ds.teacher_adapter) if ds.teacher_adapter else None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"distill.teacher_adapter={ds.teacher_adapter!r}: no adapter_config.json there; give a "
                          "PEFT adapter folder, e.g. a run's final/adapter")
    with _outside_zero3():
        model, tokenizer = load_model_and_tokenizer(name, gguf_file=gguf, dtype=m.dtype, device=device,
                                                    attn_implementation=m.attn_implementation)
    if tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ConfigError(f"distill.teacher={name!r} has another vocabulary than model.name={m.name!r}; on-policy "
                          "distillation compares log-probs of the same tokens: use a teacher of the same family")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval().requires_grad_(False)
    speedups.apply(model, device, m.cpu_matmul)
    log.info("opd teacher: %s%s on %s", name, f" + adapter {adapter}" if adapter else "", device)
    return CompletionScorer(model)


# ---- DistIL: the policy shown feedback ---------------------------------------------------------

SOLUTION_NOTE = "(A worked solution to check against, for the grader only:\n{solution}\n)"
CODE_NOTE = "An earlier attempt at this task was run against its tests. Result:\n{detail}"


def check_feedback_rows(rows: list[dict], task: str) -> None:
    """DistIL needs rich feedback: every row a reference `solution` or code `test`s. Raises naming the fix."""
    for index, row in enumerate(rows):
        if not row.get("solution") and not row.get("test"):
            raise ConfigError(
                f"train.objective=distil needs rich feedback, but training row {index} of data.task={task!r} has "
                "neither a reference 'solution' nor code 'test's; add a 'solution' column to the rows or use "
                "train.objective=grpo")


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


def code_feedback_for(cfg: Config):
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


def feedback_batch(batch: RolloutBatch, rows: list[dict], notes: list[str], cfg: Config, tokenizer) -> RolloutBatch:
    """The rollout's completions under the teacher's prompts. rows, notes: one per completion row.
    Where every completion of a group has the same note (a reference solution), one prompt per group."""
    g = batch.group_size
    per_group = all(len(set(notes[i:i + g])) == 1 for i in range(0, len(notes), g))
    chosen = range(0, len(notes), g) if per_group else range(len(notes))
    add_special = cfg.data.prompt_style == "plain"
    prompts = [tokenizer(teacher_prompt(rows[i], notes[i], cfg.data.n_shot, cfg.data.prompt_style, tokenizer),
                         add_special_tokens=add_special)["input_ids"] for i in chosen]
    return with_prompts(batch, prompts, g if per_group else 1, tokenizer.pad_token_id)


@torch.no_grad()
def teacher_distribution(score, batch: RolloutBatch, plan: ScoringPlan, rows_per_micro_batch: int,
                         top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-K tokens and renormalized probabilities at each completion position,
    (B, T, K) each, micro-batch by micro-batch. score: the policy's scorer (or its DeepSpeed engine)."""
    rows, width = batch.completion_ids.shape
    device = next(score.parameters()).device
    ids = torch.zeros((rows, width, top_k), dtype=torch.long, device=device)
    probs = torch.zeros((rows, width, top_k), device=device)
    prompts_per_micro = max(1, rows_per_micro_batch // batch.group_size)
    for row, part in micro_batches(batch, prompts_per_micro):
        out = score(part, plan.temperature, plan.shared_prefix, top_k=top_k)
        n, w = out.topk_ids.shape[:2]
        ids[row:row + n, :w], probs[row:row + n, :w] = out.topk_ids, out.topk_probs.float()
    return ids, probs
