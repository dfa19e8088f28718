"""multihop_answer and multihop_rubric: tables of (completion, row, expected score), hostile input included."""

import time

import pytest

import rewards
from data.multihop import generate_multihop
from rewards.multihop import answer_line, normalize_entity

F = "Final answer:"
MEGABYTE = 1_000_000
# The row of the hand-built walk: Ann Vale -born_in-> Rivoford -located_in-> Kestia -capital-> Dunmere.
ANSWER, PATH = "Dunmere", ["Rivoford", "Kestia"]
CHAIN = "Ann Vale was born in Rivoford. Rivoford is located in Kestia. The capital of Kestia is Dunmere."


@pytest.mark.parametrize(
    "name, expected",
    [
        pytest.param("Kestia", "kestia", id="plain"),
        pytest.param("  **KESTIA.**  ", "kestia", id="case-markdown-period"),
        pytest.param("The Ozel Labs", "ozel labs", id="leading-article"),
        pytest.param("Ann-Vale", "ann vale", id="hyphen-is-a-space"),
        pytest.param("Ann   Vale", "ann vale", id="spaces-collapse"),
        pytest.param("Theodora", "theodora", id="the-inside-a-word-stays"),
        pytest.param("!!!", "", id="only-punctuation"),
    ],
)
def test_normalize_entity(name, expected):
    assert normalize_entity(name) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        pytest.param(f"work\n{F} Kestia", (5, "Kestia"), id="after-work"),  # the line starts after "work\n"
        pytest.param(f"  {F} Kestia  \n\n", (0, "Kestia"), id="indented-trailing-blank-lines"),
        pytest.param("FINAL ANSWER: Kestia", (0, "Kestia"), id="any-case"),
        pytest.param("", None, id="empty"),
        pytest.param("It is Kestia.", None, id="no-answer-line"),
        pytest.param(f"so {F} Kestia", None, id="prefix-mid-line"),
        pytest.param(f"{F} Kestia\n{F} Dunmere", None, id="hedged"),
        pytest.param(f"{F} Kestia\nHope this helps!", None, id="text-after-the-line"),
        pytest.param(f"{F} " + "Kestia " * 40, None, id="answer-over-200-chars"),
    ],
)
def test_answer_line(completion, expected):
    """(where the answer line starts, its answer stripped), or None."""
    line = answer_line(completion)
    assert (None if line is None else (line[0], line[1].strip())) == expected


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        pytest.param(f"{CHAIN}\n{F} Dunmere", "Dunmere", 1.0, id="right"),
        pytest.param(f"{F} dunmere.", "Dunmere", 1.0, id="case-and-period"),
        pytest.param(f"{F} **Dunmere**", "Dunmere", 1.0, id="markdown-bold"),
        pytest.param(f"{F} the Ozel Labs", "Ozel Labs", 1.0, id="leading-article"),
        pytest.param(f"{F} Dunmere\n\n  \n", "Dunmere", 1.0, id="trailing-blank-lines"),
        pytest.param(f"{F} Dunmere", "dunmere.", 1.0, id="gold-normalized-too"),
        pytest.param("", "Dunmere", 0.0, id="empty"),
        pytest.param(CHAIN, "Dunmere", 0.0, id="no-answer-line"),
        pytest.param(f"{CHAIN}\n{F} Kestia", "Dunmere", 0.0, id="right-format-wrong-entity"),
        pytest.param(f"{F}", "Dunmere", 0.0, id="empty-answer"),
        pytest.param(f"{F} Dunmere\n{F} Kestia", "Dunmere", 0.0, id="hedged-one-right"),
        pytest.param(f"{F} Dunmere\n{F} Dunmere", "Dunmere", 0.0, id="repeated-answer-line"),
        pytest.param(f"{F} Dunmere or Kestia", "Dunmere", 0.0, id="two-names-on-one-line"),
        pytest.param(f"{F} Dunmere, I think", "Dunmere", 0.0, id="extra-words"),
        pytest.param(f"{F} Dunmere\nDone.", "Dunmere", 0.0, id="answer-line-not-last"),
        pytest.param(f"The {F} Dunmere", "Dunmere", 0.0, id="prefix-mid-line"),
        pytest.param("Answer: Dunmere", "Dunmere", 0.0, id="other-prefix"),
        pytest.param("#### The final answer is Dunmere", "Dunmere", 0.0, id="gsm8k-answer-line"),
        pytest.param(f"{F} Dun mere", "Dunmere", 0.0, id="split-name"),
        pytest.param(f"{F} Dunmereford", "Dunmere", 0.0, id="longer-name"),
    ],
)
def test_multihop_answer(completion, answer, expected):
    assert rewards.get("multihop_answer")([completion], answer=[answer]) == [expected]


# Hops scored: Rivoford -> Kestia and Kestia -> Dunmere (those leaving the path's entities).
@pytest.mark.parametrize(
    "completion, answer, path, expected",
    [
        pytest.param(f"{CHAIN}\n{F} Dunmere", ANSWER, PATH, 1.0, id="both-hops-stated"),
        pytest.param(f"Kestia's capital is Dunmere; Rivoford is located in Kestia.\n{F} Dunmere", ANSWER, PATH, 1.0,
                     id="any-order"),
        pytest.param(f"RIVOFORD is LOCATED in kestia. KESTIA's Capital: Dunmere!\n{F} Dunmere", ANSWER, PATH, 1.0,
                     id="case-and-punctuation"),
        pytest.param(f"Rivoford is located in Kestia, and the capital of Kestia is Dunmere.\n{F} Dunmere", ANSWER, PATH,
                     1.0, id="two-hops-in-one-sentence"),
        pytest.param(f"Dunmere is the capital of Kestia. Kestia is the country of Rivoford.\n{F} Dunmere", ANSWER,
                     PATH, 1.0, id="worked-backwards"),
        pytest.param(f"Rivoford is located in Kestia.\n{F} Dunmere", ANSWER, PATH, 0.5, id="one-of-two"),  # 1/2
        pytest.param(f"Ann Vale was born in Rivoford.\n{F} Dunmere", ANSWER, PATH, 0.0,
                     id="first-hop-not-scored"),  # 0/2: the start is not a column
        pytest.param(f"Rivoford is located in Kestia. Rivoford is located in Kestia.\n{F} Dunmere", ANSWER, PATH, 0.5,
                     id="repeats-count-once"),  # 1/2
        pytest.param(f"Rivofordia is located in Kestia. The capital of Kestia is Dunmere.\n{F} Dunmere", ANSWER, PATH,
                     0.5, id="whole-words-only"),  # 1/2
        pytest.param(f"Rivoford is located in Kestia. Kestia is big. Dunmere is the capital.\n{F} Dunmere", ANSWER,
                     PATH, 0.5, id="names-in-different-sentences"),  # 1/2: Kestia -> Dunmere never in one sentence
        # names alone are no reasoning
        pytest.param(f"Rivoford, Kestia, Dunmere.\n{F} Dunmere", ANSWER, PATH, 0.0, id="bare-list"),
        pytest.param(f"Rivoford\nKestia\nDunmere\n{F} Dunmere", ANSWER, PATH, 0.0, id="one-name-per-line"),
        pytest.param(f"Rivoford -> Kestia -> Dunmere\n{F} Dunmere", ANSWER, PATH, 0.0, id="arrows"),
        pytest.param(f"Rivoford then Kestia then Dunmere.\n{F} Dunmere", ANSWER, PATH, 0.0, id="then"),
        pytest.param(f"Rivoford Kestia Dunmere located capital.\n{F} Dunmere", ANSWER, PATH, 0.0,
                     id="relation-words-after-the-names"),
        pytest.param(f"Rivoford Kestia Dunmere. Located. Capital.\n{F} Dunmere", ANSWER, PATH, 0.0,
                     id="relation-words-in-other-sentences"),
        pytest.param(f"{'Rivoford is located in Kestia and ' * 10}the capital of Kestia is Dunmere.\n{F} Dunmere",
                     ANSWER, PATH, 0.0, id="run-on-sentence"),  # over _MAX_STEP_CHARS: no step
        # the answer decides first
        pytest.param(f"{F} Dunmere", ANSWER, PATH, 0.0, id="no-reasoning"),  # 0/2
        pytest.param(f"{CHAIN}\n{F} Kestia", ANSWER, PATH, 0.0, id="wrong-answer-zeroes-it"),
        pytest.param(CHAIN, ANSWER, PATH, 0.0, id="no-answer-line"),
        pytest.param(f"{CHAIN}\n{F} Dunmere\n{F} Kestia", ANSWER, PATH, 0.0, id="hedged"),
        pytest.param(f"Rivoford is located in Kestia.\n{F} Kestia capital Dunmere", ANSWER, PATH, 0.0,
                     id="steps-in-the-answer-line"),  # not an answer: 0
        pytest.param("", ANSWER, PATH, 0.0, id="empty"),
        pytest.param(f"Rivoford is located in Kestia. Tamsk is the capital of Kestia. Tamsk's mayor is Dunmere.\n"
                     f"{F} Dunmere", ANSWER, ["Rivoford", "Kestia", "Tamsk"], 1.0, id="three-of-three"),
        pytest.param(f"Rivoford is located in Kestia.\n{F} Dunmere", ANSWER, ["Rivoford", "Kestia", "Tamsk"], 1 / 3,
                     id="one-of-three"),  # 1/3
        pytest.param(f"{F} Dunmere", ANSWER, [], 1.0, id="empty-path-right-answer"),  # as the verifier
        pytest.param(f"{F} Kestia", ANSWER, [], 0.0, id="empty-path-wrong-answer"),
    ],
)
def test_multihop_rubric(completion, answer, path, expected):
    scores = rewards.get("multihop_rubric")([completion], answer=[answer], path=[path])
    assert scores == [pytest.approx(expected)]


@pytest.mark.parametrize("hops", [2, 3, 4])
def test_the_datasets_own_solutions_state_every_hop(hops):
    rows = generate_multihop(60, hops=hops, seed=0, num_entities=200, num_passages=hops + 2)
    scores = rewards.get("multihop_rubric")([r["solution"] for r in rows], answer=[r["answer"] for r in rows],
                                             path=[r["path"] for r in rows])
    assert scores == [1.0] * len(rows)


def test_rows_without_answer_or_path_are_not_applicable():
    done = f"{CHAIN}\n{F} Dunmere"
    assert rewards.get("multihop_answer")([done, done], answer=[None, ANSWER]) == [None, 1.0]
    assert rewards.get("multihop_rubric")([done] * 3, answer=[None, ANSWER, ANSWER], path=[PATH, None, PATH]) == [
        None, None, 1.0]


@pytest.mark.parametrize(
    "name, columns, message",
    [
        pytest.param("multihop_answer", {"answer": [7]}, "row 0 has answer 7", id="int-answer"),
        pytest.param("multihop_answer", {"answer": [""]}, "row 0 has answer ''", id="empty-answer"),
        pytest.param("multihop_answer", {"answer": ["?!"]}, "row 0 has answer '\\?!'", id="punctuation-answer"),
        pytest.param("multihop_rubric", {"answer": [ANSWER], "path": ["Rivoford"]}, "row 0 has path 'Rivoford'",
                     id="path-a-string"),
        pytest.param("multihop_rubric", {"answer": [ANSWER], "path": [["Rivoford", None]]}, "row 0 has path None",
                     id="path-with-none"),
        pytest.param("multihop_rubric", {"answer": [3.5], "path": [PATH]}, "row 0 has answer 3.5", id="float-answer"),
    ],
)
def test_malformed_rows_are_errors_naming_the_row_and_column(name, columns, message):
    with pytest.raises(ValueError, match=f"{message}.*must hold entity names|{message}.*must be a list"):
        rewards.get(name)([f"{F} Dunmere"], **columns)


@pytest.mark.parametrize("bad", [None, 7, ["not", "messages"]], ids=["none", "int", "list-of-str"])
def test_non_string_completions_are_a_type_error_naming_the_row(bad):
    for name, columns in (("multihop_answer", {"answer": [ANSWER] * 2}),
                          ("multihop_rubric", {"answer": [ANSWER] * 2, "path": [PATH] * 2})):
        with pytest.raises(TypeError, match="completion 1 is"):
            rewards.get(name)(["ok", bad], **columns)


def test_ragged_columns_are_an_error():
    with pytest.raises(ValueError, match="column 'path' has 1 rows but there are 2 completions"):
        rewards.get("multihop_rubric")(["a", "b"], answer=[ANSWER] * 2, path=[PATH])


@pytest.mark.parametrize(
    "completion, expected_answer, expected_rubric",
    [
        pytest.param("Rivoford " * (MEGABYTE // 9), 0.0, 0.0, id="names-no-answer"),
        pytest.param(f"{F} Dunmere\n" * (MEGABYTE // 21), 0.0, 0.0, id="answer-lines"),
        pytest.param("\n" * MEGABYTE + f"{F} Dunmere", 1.0, 0.0, id="newlines"),
        pytest.param(" " * MEGABYTE + f"{F} Dunmere", 1.0, 0.0, id="spaces-before-prefix"),
        pytest.param("Rivoford Kestia " * (MEGABYTE // 16) + f"\n{F} Dunmere", 1.0, 0.0, id="names-without-steps"),
        pytest.param(
            "Rivoford is located in Kestia. " * (MEGABYTE // 31) + f"Kestia's capital is Dunmere.\n{F} Dunmere",
            1.0, 1.0, id="long-reasoning"),
        pytest.param("Rivoford Kestia. " * (MEGABYTE // 17) + f"\n{F} Dunmere", 1.0, 0.0, id="short-name-sentences"),
        pytest.param("Rivoford Kestia located. " * (MEGABYTE // 25) + f"\n{F} Dunmere", 1.0, 0.0,
                     id="sentences-that-nearly-state-a-hop"),
        pytest.param(f"{F} " + "Dunmere" * (MEGABYTE // 7), 0.0, 0.0, id="huge-answer"),
        pytest.param("!?" * (MEGABYTE // 2) + f"\n{F} Dunmere", 1.0, 0.0, id="punctuation"),
        pytest.param("Final answer" * (MEGABYTE // 12), 0.0, 0.0, id="prefixes-without-colon"),
    ],
)
def test_rewards_score_a_megabyte_in_well_under_a_second(completion, expected_answer, expected_rubric):
    start = time.perf_counter()
    answer = rewards.get("multihop_answer")([completion], answer=[ANSWER])
    rubric = rewards.get("multihop_rubric")([completion], answer=[ANSWER], path=[PATH])
    assert time.perf_counter() - start < 0.5
    assert (answer, rubric) == ([expected_answer], [expected_rubric])
