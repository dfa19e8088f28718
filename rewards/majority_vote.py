"""Label-free answer reward: agreement with the group's majority answer (TTRL; multi-reward RLIF).

For data without ground truth. Completions of the same prompt are found by their `prompts`
value, so the reward needs no knowledge of the group size; answers are GSM8K answer lines,
compared as parsed numbers (so "72", "72.0" and "$72" agree).
"""

from grpo.label_free import majority_vote_reward
from rewards.gsm8k import extract_final_answer, parse_number
from rewards.registry import register


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
        votes = majority_vote_reward([answers[i] for i in members], len(members))
        for i, vote in zip(members, votes):
            scores[i] = vote
    return scores
