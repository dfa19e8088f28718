"""reasoning_gym: each reasoning-gym dataset's own answer checker (`score_answer`), for rows from
`data.reasoning_gym_task.load_reasoning_gym_rows`.

The model's answer is the text between the completion's last `</answer>` and the `<answer>` before it
(the last block, as reasoning-gym's `extract_answer` reads it, found with two reverse scans so a
flood of unclosed tags costs linear time); a completion without one scores 0.0.
The checker gets the row's entry back as the dataset made it ({"question", "answer", "metadata"}),
and the dataset is the one `metadata["source_dataset"]` names. Scores are the checker's, in [0, 1]
(many checkers give partial credit, e.g. a near-miss number).

Bounded cost: an answer longer than MAX_ANSWER_CHARS scores 0.0 unread (no checker is fed a
megabyte). A checker that raises is reasoning-gym's failure, not the model's: RewardInfrastructureError.
reasoning-gym is imported on first use, so `import rewards` works without it installed.
"""

import functools

from rewards.registry import RewardInfrastructureError, check_rows, register

MAX_ANSWER_CHARS = 2000
OPEN, CLOSE = "<answer>", "</answer>"


@functools.cache
def _checker(name: str):
    from reasoning_gym.factory import DATASETS, get_score_answer_fn

    if name not in DATASETS:
        raise ValueError(f"reasoning_gym reward: metadata names dataset {name!r}, which reasoning-gym does not have")
    return get_score_answer_fn(name)


def extract_answer(completion: str) -> str | None:
    """The last <answer> block's text, stripped, or None."""
    end = completion.rfind(CLOSE)
    start = completion.rfind(OPEN, 0, end) if end >= 0 else -1
    return completion[start + len(OPEN):end].strip() if start >= 0 else None


@register("reasoning_gym")
def reasoning_gym_reward(completions: list[str], answer: list[str], metadata: list[dict], **columns) -> list[float]:
    """The dataset's `score_answer` on each completion's last <answer> block."""
    check_rows("reasoning_gym", completions, answer=answer, metadata=metadata)
    questions = columns.get("question") or [""] * len(completions)
    scores = []
    for row, (completion, oracle, meta, question) in enumerate(zip(completions, answer, metadata, questions)):
        if not isinstance(meta, dict) or not isinstance(meta.get("source_dataset"), str):
            raise ValueError(f"reasoning_gym reward: row {row} has metadata {meta!r:.80} without a 'source_dataset'; "
                             f"rows come from data.reasoning_gym_task.load_reasoning_gym_rows")
        model_answer = extract_answer(completion)
        if model_answer is None or len(model_answer) > MAX_ANSWER_CHARS:
            scores.append(0.0)
            continue
        name = meta["source_dataset"]
        checker = _checker(name)
        entry = {"question": question, "answer": oracle, "metadata": meta}
        try:
            score = checker(model_answer, entry)
        except Exception as error:  # noqa: BLE001  (reported as the checker's failure, never scored as 0)
            raise RewardInfrastructureError(
                f"reasoning-gym's {name!r} checker raised {error!r} on row {row} (answer {model_answer!r:.80})"
            ) from error
        scores.append(float(score))
    return scores
