"""Label-free answer reward: agreement with the group's majority answer (TTRL; multi-reward RLIF).

For data without ground truth. Completions of the same prompt are found by their `prompts`
value, so the reward needs no knowledge of the group size; answers are GSM8K answer lines,
compared as parsed numbers (so "72", "72.0" and "$72" agree).
"""

from collections import Counter

from rewards.gsm8k import extract_final_answer, parse_number
from rewards.registry import register


def majority_vote_scores(answers: list[str | None], group_size: int) -> list[float]:
    """1.0 for each completion whose answer is its group's most common answer, else 0.0.

    answers: B extracted final answers, None where a completion has none; each run of
    `group_size` consecutive answers is one group. They are compared as given, so normalize them
    first (e.g. "72", "72.0" and "$72" to one form). None never wins the vote and always scores 0;
    a group with no answer at all scores 0 throughout. A tie for the most votes goes to the tied
    answer that appears first in the group, so the result is deterministic (TTRL takes
    Counter.most_common too).
    """
    if group_size < 2 or len(answers) % group_size != 0:
        raise ValueError(f"majority vote needs groups of at least 2 and {len(answers)} answers a multiple "
                         f"of group_size={group_size}")
    scores = []
    for start in range(0, len(answers), group_size):
        group = answers[start : start + group_size]
        votes = Counter(a for a in group if a is not None)  # keeps first-appearance order
        winner = max(votes, key=votes.get) if votes else None  # max keeps the first of equals
        scores.extend(1.0 if a is not None and a == winner else 0.0 for a in group)
    return scores


def _normalized_answer(completion: str) -> str | None:
    text = extract_final_answer(completion)
    value = parse_number(text) if text is not None else None
    return None if value is None else repr(round(value, 6))


@register("majority_vote")
def majority_vote(completions: list[str], prompts: list, **columns) -> list[float]:
    """1.0 when a completion's final answer is the most common one among its prompt's completions."""
    answers = [_normalized_answer(c) for c in completions]
    groups: dict = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(str(prompt), []).append(i)
    scores = [0.0] * len(completions)
    for members in groups.values():
        if len(members) < 2:
            continue  # a lone completion has nobody to agree with
        votes = majority_vote_scores([answers[i] for i in members], len(members))
        for i, vote in zip(members, votes):
            scores[i] = vote
    return scores
