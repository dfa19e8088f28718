"""Multi-hop QA rewards (data/multihop.py): the final entity, and the hops stated on the way.

Answer format: exactly one line that starts (after optional spaces or tabs) with `Final answer:`,
case-insensitive, and it is the completion's last non-empty line; what follows the colon on that
line is the predicted entity. Both sides are normalized before comparison: casefolded, every run of
punctuation, symbols and underscores turned into one space, spaces collapsed, a leading "the"
dropped. So `Final answer: **kestia.**` names "Kestia", and `Final answer: Kestia, I think` does not.

multihop_answer (verifier): 1.0 when the predicted entity equals the row's `answer`, else 0.0.

multihop_rubric (process supervision by reasoning steps): the share of the walk's hops that the
reasoning states, where the reasoning is the text before the answer line. The hops scored are
those leaving each entity of the row's `path` (the walk's intermediate entities): path[i] ->
path[i + 1], and the last one -> `answer`; the first hop, from the start the question names, is
not a column and is not scored. A hop is stated when one sentence of the reasoning (split at
. ! ? ; and line breaks, at most _MAX_STEP_CHARS long) names both of its entities as whole words
after normalization, in either order, with a relation word (RELATION_WORDS: the words of the
dataset's fact sentences and question phrases, such as "born", "located", "capital") between the
two names or among the _RELATION_LOOKBACK words before the first: "Rivoford is located in
Kestia", "The capital of Kestia is Dunmere", "Kestia's capital is Dunmere". In any order across
sentences: a chain worked backwards from the question is as good a trace. Each hop counts once.
The share counts only when multihop_answer is 1.0: a wrong answer scores 0, so a policy cannot
farm it. An empty path scores as the verifier does.

Loopholes closed: a bare list of names ("Rivoford, Kestia, Dunmere", one per line, with arrows or
"then") states no step and scores 0; hedging (two answer lines score 0, even if one is right);
text after the answer line (0); repeating a step (counted once); names placed in the answer line
(not reasoning); one run-on sentence naming everything (over _MAX_STEP_CHARS: no step).
Not defended: the relation word is not checked against the hop's own relation ("Rivoford is the
capital of Kestia" states the hop too), and telegraphic steps ("Rivoford located Kestia") count;
copying the context's fact sentences into the reasoning states every hop, like a real trace
would; a correct answer is still required, and rollout.max_new_tokens bounds the copy.

Bounded cost on hostile input: one linear regex scan for the answer line, an answer over
_MAX_ANSWER_CHARS scores 0 unread, the reasoning is split once, and at most _MAX_SENTENCES_READ
sentences (of at most _MAX_STEP_CHARS, holding a relation word and both names of a hop) are read.
"""

import re

from data.multihop import ANSWER_PREFIX, RELATIONS
from rewards.registry import check_rows, register

CORRECT_REWARD = 1.0
_MAX_ANSWER_CHARS = 200  # far above any entity name; a longer "answer" is not a name
# `^[ \t]*` then the fixed prefix: linear even over a megabyte of spaces (one line start to retry).
_ANSWER_LINE = re.compile(r"^[ \t]*" + re.escape(ANSWER_PREFIX), re.IGNORECASE | re.MULTILINE)
_NOT_WORD = re.compile(r"[\W_]+")
_SENTENCE_BREAK = re.compile(r"[.!?;\n]+")
_MAX_STEP_CHARS = 300  # a sentence longer than this is a dump of names, not one reasoning step
_MAX_SENTENCES_READ = 200  # far above a real trace's steps; bounds the cost of a hostile one
_RELATION_LOOKBACK = 3  # "the capital of Kestia is Dunmere": the relation word may precede both names


def normalize_text(text: str) -> str:
    """Casefolded words of `text` separated by single spaces (punctuation and symbols removed)."""
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def normalize_entity(name: str) -> str:
    """`normalize_text`, then a leading "the" dropped: "The Kestia Group." -> "kestia group"."""
    return normalize_text(name).removeprefix("the ")


def _relation_words() -> frozenset[str]:
    """The words of RELATIONS' fact sentences and question phrases, less their placeholders and
    function words: "born", "located", "capital", "birthplace", "founder", ..."""
    function_words = {"h", "t", "the", "of", "is", "was", "in", "at", "for", "has", "its"}
    texts = (text for relation in RELATIONS.values() for text in (relation.sentence, relation.phrase))
    return frozenset(word for text in texts for word in normalize_text(text).split()) - function_words


RELATION_WORDS = _relation_words()


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


def _mentions(words: list[str], name: list[str]) -> list[tuple[int, int]]:
    """[start, end) of each occurrence of the words `name` in `words`."""
    return [(i, i + len(name)) for i in range(len(words) - len(name) + 1) if words[i : i + len(name)] == name]


def states_hop(words: list[str], first: str, second: str) -> bool:
    """Whether the sentence `words` (normalized) names `first` and `second` (normalized names) with
    a relation word between them or among the _RELATION_LOOKBACK words before the earlier one."""
    for a in _mentions(words, first.split()):
        for b in _mentions(words, second.split()):
            (start, end), (next_start, _) = sorted([a, b])
            if end > next_start:
                continue  # one name inside the other
            nearby = words[end:next_start] + words[max(0, start - _RELATION_LOOKBACK) : start]
            if RELATION_WORDS.intersection(nearby):
                return True
    return False


def stated_hops(reasoning: str, hops: list[tuple[str, str]]) -> int:
    """How many of `hops` (pairs of normalized names) some sentence of `reasoning` states. At most
    _MAX_SENTENCES_READ sentences that could state one are read: more is a dump, not a trace."""
    stated, read = set(), 0
    for sentence in _SENTENCE_BREAK.split(reasoning.casefold()):
        if len(sentence) > _MAX_STEP_CHARS or not any(word in sentence for word in RELATION_WORDS):
            continue
        words = None
        for hop in hops:
            # Normalization keeps every word character: both names' words must already be in the sentence.
            if hop in stated or not all(word in sentence for name in hop for word in name.split()):
                continue
            words = words if words is not None else normalize_text(sentence).split()
            if states_hop(words, *hop):
                stated.add(hop)
        read += words is not None
        if len(stated) == len(hops) or read >= _MAX_SENTENCES_READ:
            break
    return len(stated)


def path_share(completion: str, gold: str, path: list[str]) -> float:
    """The rubric score of one completion (see the module docstring); `gold` and `path` normalized."""
    line = answer_line(completion)
    if line is None or normalize_entity(line[1]) != gold:
        return 0.0
    if not path:
        return CORRECT_REWARD
    chain = [*path, gold]
    hops = list(dict.fromkeys(zip(chain, chain[1:])))
    return stated_hops(completion[: line[0]], hops) / len(hops)


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
    """Share of the hops leaving the row's `path` entities that the reasoning states when the answer
    is right, else 0.0; None for rows whose `answer` or `path` is None (not a multihop row)."""
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
