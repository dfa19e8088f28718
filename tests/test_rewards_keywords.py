import time

import pytest

import rewards
from rewards.keywords import keyword_groups, keywords_reward, word_forms

MEDICAL = {"diagnostic": ["symptoms", "diagnosis"], "treatment": ["therapy", "medication"]}
PROSE = (
    "The patient reported worsening {dx} over two weeks. After a careful examination "
    "the physician explained what was found and started a course of {tx} with a follow-up visit."
)
MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    "completion, keywords, expected",
    [
        pytest.param(PROSE.format(dx="symptoms", tx="therapy"), MEDICAL, 1.0, id="all-groups"),
        pytest.param(  # case-insensitive
            PROSE.format(dx="SYMPTOMS", tx="Therapy"), MEDICAL, 1.0, id="case-insensitive"
        ),
        pytest.param(PROSE.format(dx="symptom", tx="therapies"), MEDICAL, 1.0, id="inflections"),  # inflections
        pytest.param(PROSE.format(dx="diagnoses", tx="medications"), MEDICAL, 1.0, id="plural-inflections"),
        pytest.param(PROSE.format(dx="symptoms", tx="rest"), MEDICAL, 0.5, id="one-of-two-groups"),  # one of two groups
        pytest.param(PROSE.format(dx="pain", tx="rest"), MEDICAL, 0.0, id="no-keywords"),
        pytest.param(  # whole words only
            PROSE.format(dx="asymptomatic signs", tx="physiotherapy"), MEDICAL, 0.0, id="whole-words-only"
        ),
        pytest.param(  # 'medical' is not 'medication'
            PROSE.format(dx="symptoms", tx="medical advice"), MEDICAL, 0.5, id="similar-word-not-keyword"
        ),
        pytest.param(  # repeats earn nothing
            PROSE.format(dx="symptoms symptoms symptoms", tx="rest"), MEDICAL, 0.5, id="repeats-earn-nothing"
        ),
        pytest.param(  # flat: all required
            PROSE.format(dx="symptoms", tx="therapy"), ["symptom", "therapy", "diagnosis"], 2 / 3,
            id="flat-list-all-required",
        ),
        pytest.param(  # phrase
            PROSE.format(dx="symptoms", tx="therapy"), [["fever", "symptom"], ["follow up"]], 1.0, id="phrase-in-group"
        ),
        pytest.param(  # not consecutive
            PROSE.format(dx="symptoms", tx="therapy"), [["checkup"], ["follow visit"]], 0.0, id="phrase-not-consecutive"
        ),
        pytest.param(  # possessive
            PROSE.format(dx="patient's symptoms", tx="therapy"), [["patient"]], 1.0, id="possessive"
        ),
        pytest.param("", MEDICAL, 0.0, id="empty"),
        pytest.param("symptoms, diagnosis, therapy, medication", MEDICAL, 0.0, id="bare-list"),  # bare list
        pytest.param("- symptoms\n- diagnosis\n- therapy\n- medication\n", MEDICAL, 0.0, id="bullet-list"),
        pytest.param("symptoms " * 10_000 + "therapy", MEDICAL, 0.0, id="keyword-spam"),  # keyword spam
        pytest.param(  # 4 of 7 words > 0.25
            "Symptoms and diagnosis, then therapy and medication.", MEDICAL, 0.0, id="too-dense"
        ),
    ],
)
def test_keywords_reward(completion, keywords, expected):
    assert keywords_reward([completion], keywords=[keywords]) == [pytest.approx(expected)]


@pytest.mark.parametrize(
    "word, expected",
    [
        pytest.param("symptoms", {"symptoms", "symptom"}, id="plural-s"),
        pytest.param("therapies", {"therapies", "therapie", "therapi", "therapy", "therapiis"}, id="ies-plural"),
        pytest.param("class", {"class"}, id="double-s"),
        pytest.param("s", {"s"}, id="single-letter"),
    ],
)
def test_word_forms(word, expected):
    assert word_forms(word) == expected


def test_density_threshold_is_an_option():
    # "Symptoms and diagnosis, then therapy and medication." has 4 keywords in 7 words: density 0.57.
    text = ["Symptoms and diagnosis, then therapy and medication."]
    assert rewards.get("keywords", max_keyword_density=0.5)(text, keywords=[MEDICAL]) == [0.0]
    assert rewards.get("keywords", max_keyword_density=0.6)(text, keywords=[MEDICAL], prompts=["p"]) == [1.0]
    with pytest.raises(ValueError, match=r"max_keyword_density=0 must be in \(0, 1\]"):
        rewards.get("keywords", max_keyword_density=0)


def test_rows_without_keywords_are_skipped():
    assert keywords_reward(["text", "text"], keywords=[None, ["text"]], max_keyword_density=1.0) == [None, 1.0]


@pytest.mark.parametrize(
    "row",
    ["symptoms", [], [[]], [["ok"], "bad"], {"g": []}, [["!!!"]], 7],
    ids=["bare-string", "no-groups", "empty-group", "string-group", "dict-groups", "punctuation-only", "number"],
)
def test_malformed_keyword_rows_raise(row):
    with pytest.raises(ValueError, match="keywords: row"):
        keyword_groups(row)


@pytest.mark.parametrize(
    "completion",
    [
        "symptoms " * (MEGABYTE // 9),
        "x" * MEGABYTE,
        "'" * MEGABYTE,
        "a'" * (MEGABYTE // 2),
        " ".join(f"w{i}" for i in range(MEGABYTE // 7)),  # ~140k distinct words
        "follow " * (MEGABYTE // 7),  # every position starts the phrase
    ],
    ids=["spam", "one-long-word", "apostrophes", "word-apostrophe", "distinct-words", "phrase-prefixes"],
)
def test_a_megabyte_is_scored_in_well_under_a_second(completion):
    start = time.perf_counter()
    score = keywords_reward([completion], keywords=[[["symptom"], ["follow up"]]])
    assert time.perf_counter() - start < 0.5
    assert score == [0.0]
