"""Multi-hop QA rewards (data/multihop.py): the final entity, and the path entities named on the way.

Answer format: exactly one line that starts (after optional spaces or tabs) with `Final answer:`,
case-insensitive, and it is the completion's last non-empty line; what follows the colon on that
line is the predicted entity. Both sides are normalized before comparison: casefolded, every run of
punctuation, symbols and underscores turned into one space, spaces collapsed, a leading "the"
dropped. So `Final answer: **kestia.**` names "Kestia", and `Final answer: Kestia, I think` does not.

multihop_answer (verifier): 1.0 when the predicted entity equals the row's `answer`, else 0.0.

multihop_rubric (entity-level process supervision): the share of the row's `path` (the walk's
intermediate entities: not the start, which the question names, nor the answer, which the verifier
scores) that the reasoning names, where the reasoning is the text before the answer line and a
name counts when it occurs as whole words after normalization. In any order: a chain worked
backwards from the question ("the capital of X is ..., X is the country of ...") is as good a
trace, and the order of the hops is already checked by reaching the right answer. Each entity
counts once. The share counts only when multihop_answer is 1.0: a wrong answer scores 0, so a
policy cannot farm it by listing entities. An empty path scores as the verifier does.

Loopholes closed: hedging (two answer lines score 0, even if one is right); text after the
answer line (0); repeating a name (counted once); names placed in the answer line (not reasoning).
Not defended: copying the whole context into the reasoning names every path entity, like a real
trace would; a correct answer is still required, and rollout.max_new_tokens bounds the copy.

Bounded cost on hostile input: one linear regex scan for the answer line, an answer over
_MAX_ANSWER_CHARS scores 0 unread, and normalization is one linear pass.
"""

import re

from data.multihop import ANSWER_PREFIX
from rewards.registry import check_rows, register

CORRECT_REWARD = 1.0
_MAX_ANSWER_CHARS = 200  # far above any entity name; a longer "answer" is not a name
# `^[ \t]*` then the fixed prefix: linear even over a megabyte of spaces (one line start to retry).
_ANSWER_LINE = re.compile(r"^[ \t]*" + re.escape(ANSWER_PREFIX), re.IGNORECASE | re.MULTILINE)
_NOT_WORD = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """Casefolded words of `text` separated by single spaces (punctuation and symbols removed)."""
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def normalize_entity(name: str) -> str:
    """`normalize_text`, then a leading "the" dropped: "The Kestia Group." -> "kestia group"."""
    return normalize_text(name).removeprefix("the ")


def answer_line(completion: str) -> tuple[int, str] | None:
    """(where the single answer line starts, the text after its prefix), or None when there is no
    answer line, text after the first one (a second answer line included), or an answer over
    _MAX_ANSWER_CHARS."""
    first = _ANSWER_LINE.search(completion)
    if first is None:
        return None
    line_end = completion.find("\n", first.end())
    if line_end == -1:
        line_end = len(completion)
    elif completion[line_end:].strip():
        return None
    if line_end - first.end() > _MAX_ANSWER_CHARS:
        return None
    return first.start(), completion[first.end():line_end]


def _gold(value, row: int, column: str, reward: str) -> str:
    name = normalize_entity(value) if isinstance(value, str) else ""
    if not name:
        raise ValueError(
            f"{reward}: row {row} has {column} {value!r:.80}; the {column!r} column must hold entity names "
            f"(non-empty strings with letters or digits), as data.multihop rows do"
        )
    return name


def _is_correct(completion: str, gold: str) -> bool:
    line = answer_line(completion)
    return line is not None and normalize_entity(line[1]) == gold


def path_share(completion: str, gold: str, path: list[str]) -> float:
    """The rubric score of one completion (see the module docstring); `gold` and `path` normalized."""
    line = answer_line(completion)
    if line is None or normalize_entity(line[1]) != gold:
        return 0.0
    entities = set(path)
    if not entities:
        return CORRECT_REWARD
    reasoning = f" {normalize_text(completion[:line[0]])} "
    return sum(f" {entity} " in reasoning for entity in entities) / len(entities)


@register("multihop_answer")
def multihop_answer(completions: list[str], answer: list[str | None], **columns) -> list[float | None]:
    """1.0 when the single, last `Final answer: NAME` line names the row's `answer` (normalized),
    else 0.0; None for rows whose `answer` is None (not a multihop row)."""
    check_rows("multihop_answer", completions, answer=answer)
    scores = []
    for i, (completion, gold) in enumerate(zip(completions, answer)):
        if gold is None:
            scores.append(None)
            continue
        correct = _is_correct(completion, _gold(gold, i, "answer", "multihop_answer"))
        scores.append(CORRECT_REWARD if correct else 0.0)
    return scores


@register("multihop_rubric")
def multihop_rubric(
    completions: list[str], answer: list[str | None], path: list[list[str] | None], **columns
) -> list[float | None]:
    """Share of the row's `path` entities named in the reasoning when the answer is right, else 0.0;
    None for rows whose `answer` or `path` is None (not a multihop row)."""
    check_rows("multihop_rubric", completions, answer=answer, path=path)
    scores = []
    for i, (completion, gold, entities) in enumerate(zip(completions, answer, path)):
        if gold is None or entities is None:
            scores.append(None)
            continue
        if not isinstance(entities, (list, tuple)):
            raise ValueError(
                f"multihop_rubric: row {i} has path {entities!r:.80}; the 'path' column must be a list of "
                f"entity names (the walk's intermediate entities), as data.multihop rows have"
            )
        names = [_gold(entity, i, "path", "multihop_rubric") for entity in entities]
        scores.append(path_share(completion, _gold(gold, i, "answer", "multihop_rubric"), names))
    return scores
