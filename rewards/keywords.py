"""Keyword-coverage reward for domain text.

A row's `keywords` are groups of alternatives, e.g. for medical text
`{"diagnosis": ["symptoms", "diagnosis"], "treatment": ["therapy", "medication"]}`.
A group is covered when any of its keywords appears; the reward is the fraction
of groups covered (1.0 when all are). Accepted row shapes:

- `dict[str, list[str]]`: named groups (the names are only labels);
- `list[list[str]]`: unnamed groups;
- `list[str]`: every keyword is required (each is its own group).

Matching is whole-word and case-insensitive; a keyword may span words
(`"blood pressure"`, `"follow-up"`). Regular plurals match both ways
(`symptom`/`symptoms`, `therapy`/`therapies`, `diagnosis`/`diagnoses`); we do
not stem further because stemmers conflate `medical` with `medication`, which
would let one word cover the treatment group.

Loopholes closed: presence is counted, not frequency, so repeating a keyword
earns nothing; and text whose words are mostly keywords (a bare list such as
`symptoms, diagnosis, therapy, medication`) scores 0, see `max_keyword_density`.
Not defended: keywords buried in fluent but irrelevant filler. That needs a
judge of meaning, not a verifiable rule.
"""

import re
from collections import Counter

from rewards.registry import check_rows, register

# Words: letters/digits with inner apostrophes (`patient's`). A flat character
# class with one optional suffix group, so matching is linear.
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
_POSSESSIVE = ("'s", "’s")


def words(text: str) -> list[str]:
    """Lower-cased words of `text`, possessive `'s` removed."""
    return [w.removesuffix(_POSSESSIVE[0]).removesuffix(_POSSESSIVE[1]) for w in _WORD.findall(text.lower())]


def word_forms(word: str) -> set[str]:
    """`word` and the singulars it could be the plural of.

    Two words match when their form sets intersect, so `symptom` ~ `symptoms`,
    `therapy` ~ `therapies`, `diagnosis` ~ `diagnoses`, `box` ~ `boxes`.
    """
    forms = {word}
    if word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
    if word.endswith("es"):
        forms.update({word[:-2], word[:-2] + "is"})
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    return {form for form in forms if form}


def keyword_groups(row) -> list[list[tuple[str, ...]]]:
    """A row's `keywords` as groups of keywords, each keyword a tuple of words."""
    if isinstance(row, dict):
        groups = list(row.values())
    elif isinstance(row, (list, tuple)) and all(isinstance(k, str) for k in row):
        groups = [[k] for k in row]
    elif isinstance(row, (list, tuple)):
        groups = list(row)
    else:
        groups = None
    if not groups or not all(isinstance(g, (list, tuple)) and g and all(isinstance(k, str) for k in g) for g in groups):
        raise ValueError(
            f"keywords: row {row!r} is not a keyword list; give a list of words, a list of "
            f"non-empty lists of words, or a dict of group name -> non-empty list of words"
        )
    parsed = [[tuple(words(k)) for k in group] for group in groups]
    if not all(all(parsed_group) for parsed_group in parsed):
        raise ValueError(f"keywords: row {row!r} has a keyword with no letters or digits in it")
    return parsed


class _TextIndex:
    """A completion's words, with the distinct ones that match any keyword."""

    def __init__(self, text: list[str], keyword_words: set[str]):
        self.text = text
        self.counts = Counter(text)
        keyword_forms = set().union(*(word_forms(w) for w in keyword_words))
        # word_forms(w) == {w} unless w ends in "s": a set look-up settles most words.
        self.hits = {
            w
            for w in self.counts
            if w in keyword_forms or (w.endswith("s") and not word_forms(w).isdisjoint(keyword_forms))
        }

    def matches(self, keyword_word: str) -> set[str]:
        """Distinct words of the text that match `keyword_word`."""
        forms = word_forms(keyword_word)
        return {w for w in self.hits if not word_forms(w).isdisjoint(forms)}

    def contains(self, keyword: tuple[str, ...]) -> bool:
        """Whether the words of `keyword` occur consecutively in the text."""
        allowed = [self.matches(w) for w in keyword]
        if not all(allowed):
            return False
        if len(keyword) == 1:
            return True
        text, n = self.text, len(keyword)
        return any(
            all(text[start + i] in allowed[i] for i in range(1, n))
            for start in range(len(text) - n + 1)
            if text[start] in allowed[0]
        )


def keyword_score(completion: str, groups: list[list[tuple[str, ...]]], max_keyword_density: float) -> float:
    """Fraction of groups covered; 0.0 when keyword occurrences make up more
    than `max_keyword_density` of the words (a bare keyword list)."""
    text = words(completion)
    if not text:
        return 0.0
    index = _TextIndex(text, {w for group in groups for keyword in group for w in keyword})
    if sum(index.counts[w] for w in index.hits) > max_keyword_density * len(text):
        return 0.0
    covered = sum(any(index.contains(keyword) for keyword in group) for group in groups)
    return covered / len(groups)


def _check_options(max_keyword_density: float = 0.25) -> None:
    if not 0.0 < max_keyword_density <= 1.0:
        raise ValueError(
            f"keywords: max_keyword_density={max_keyword_density!r} must be in (0, 1]; "
            f"e.g. 0.25 allows one keyword per four words"
        )


@register("keywords", check_options=_check_options)
def keywords_reward(
    completions: list[str], keywords: list, *, max_keyword_density: float = 0.25, **columns
) -> list[float | None]:
    """Fraction of the row's keyword groups that the completion covers; None for
    rows without `keywords`.

    max_keyword_density: the largest share of the completion's words that may be
    keyword occurrences (0.25 = at least three other words per keyword); above it
    the text is a keyword list, not prose, and scores 0.
    """
    check_rows("keywords", completions, keywords=keywords)
    return [
        None if row is None else keyword_score(c, keyword_groups(row), max_keyword_density)
        for c, row in zip(completions, keywords)
    ]
