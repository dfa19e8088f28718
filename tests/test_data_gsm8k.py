"""GSM8K parsing: final-answer normalization, calculator annotations, every row of the local copy."""

import json

import pytest

from data import ANSWER_PREFIX, BadRowError, load_gsm8k_file, normalize_number, parse_gsm8k_row
from data import strip_calculator_annotations

from tests.helpers.gsm8k import GSM8K_DIR, needs_gsm8k


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("72", "72", id="plain-integer"),
        pytest.param(" 72\n", "72", id="surrounding-whitespace"),
        pytest.param("1,080", "1080", id="thousands-comma"),
        pytest.param("109,200,000", "109200000", id="several-commas"),
        pytest.param("$5", "5", id="dollar-sign"),
        pytest.param("$1,250.00", "1250", id="dollars-commas-cents"),
        pytest.param("-3", "-3", id="negative"),
        pytest.param("0.5", "0.5", id="decimal"),
        pytest.param("0.50", "0.5", id="trailing-zero-dropped"),
        pytest.param(".5", "0.5", id="leading-dot"),
        pytest.param("3.0", "3", id="whole-decimal-to-integer"),
        pytest.param("+7", "7", id="plus-sign-dropped"),
        pytest.param("-0", "0", id="negative-zero"),
        pytest.param("12.345", "12.345", id="three-decimals-kept"),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "seventy", "72 apples", "1/2", "3-4", "--3", "$", "1.2.3", "1e5", "nan"],
    ids=[
        "empty", "blank", "word", "number-with-unit", "fraction", "range", "double-minus", "bare-dollar",
        "two-dots", "exponent", "nan",
    ],
)
def test_normalize_number_rejects_non_numbers(text):
    with pytest.raises(ValueError, match="is not a number"):
        normalize_number(text)


def test_strip_calculator_annotations_keeps_the_visible_result():
    text = "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nShe earned 0.2 x 50 = $<<0.2*50=10>>10."
    assert strip_calculator_annotations(text) == "Weng earns 12/60 = $0.2 per minute.\nShe earned 0.2 x 50 = $10."


def test_parse_row_builds_question_answer_and_solution():
    raw = {
        "question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72 clips.\n#### 1,072",
    }
    row = parse_gsm8k_row(raw)
    assert row == {
        "question": raw["question"],
        "answer": "1072",
        "solution": "Natalia sold 48/2 = 24 clips in May.\nIn all 48+24 = 72 clips.\n#### The final answer is 1072",
    }
    assert raw["answer"].endswith("#### 1,072")  # the input is not mutated


@needs_gsm8k
@pytest.mark.parametrize(("split", "n_rows"), [("train", 7473), ("test", 1319)], ids=["train", "test"])
def test_every_local_row_parses(split, n_rows):
    path = GSM8K_DIR / f"{split}.jsonl"
    rows = load_gsm8k_file(path)
    raws = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(raws) == n_rows  # 7473 + 1319 = 8792 rows in all
    for raw, row in zip(raws, rows):
        # The extracted answer is the text after ####, only separators removed.
        assert row["answer"] == raw["answer"].split("####")[1].strip().replace(",", "")
        assert row["answer"].lstrip("-").isdigit()  # GSM8K final answers are all integers
        assert "<<" not in row["solution"] and ">>" not in row["solution"]
        assert row["solution"].endswith(f"\n{ANSWER_PREFIX} {row['answer']}")
        assert row["solution"].count("####") == 1


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param({"question": "How many?", "answer": "It is 4."}, "exactly one '####'", id="no-marker"),
        pytest.param({"question": "How many?", "answer": "4 #### 4 #### 4"}, "found 2", id="two-markers"),
        pytest.param(
            {"question": "How many?", "answer": "It is four.\n#### four"}, "'four' is not a number", id="word-answer"
        ),
        pytest.param({"question": "How many?", "answer": "It is 4.\n####"}, "is not a number", id="empty-answer"),
        pytest.param({"answer": "#### 4"}, "field 'question'", id="missing-question"),
        pytest.param({"question": "How many?"}, "field 'answer'", id="missing-answer"),
        pytest.param({"question": "   ", "answer": "#### 4"}, "field 'question'", id="blank-question"),
        pytest.param({"question": "How many?", "answer": 4}, "field 'answer'", id="non-string-answer"),
    ],
)
def test_bad_rows_name_file_line_and_reason(tmp_path, raw, reason):
    good = {"question": "What is 2 + 2?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(raw) + "\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=reason) as caught:
        load_gsm8k_file(path)
    assert (caught.value.source, caught.value.line) == (str(path), 2)
    assert f"{path}, line 2" in str(caught.value) and "on_bad_row='skip'" in str(caught.value)


def test_skip_drops_bad_rows_and_logs_each_with_its_line(tmp_path, caplog):
    lines = [
        json.dumps({"question": "What is 2 + 2?", "answer": "#### 4"}),
        json.dumps({"question": "No marker", "answer": "4"}),
        "{not json",
        "",  # a blank line is not a row
        json.dumps(["a", "list"]),
        json.dumps({"question": "What is 3 - 5?", "answer": "#### -2"}),
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="data.rows"):
        rows = load_gsm8k_file(path, on_bad_row="skip")
    assert [row["answer"] for row in rows] == ["4", "-2"]
    messages = [record.getMessage() for record in caplog.records]
    assert any("line 2" in m and "'####'" in m for m in messages)
    assert any("line 3" in m and "not valid JSON" in m for m in messages)
    assert any("line 5" in m and "expected a JSON object" in m for m in messages)
    # JSON decoding drops lines 3 and 5 (2 of 5 rows), parsing then drops line 2 (1 of 3).
    assert any("skipped 2 bad row(s) of 5" in m for m in messages)
    assert any("skipped 1 bad row(s) of 3" in m for m in messages)


def test_unknown_bad_row_policy_is_an_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="on_bad_row='keep'"):
        load_gsm8k_file(path, on_bad_row="keep")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_gsm8k_file(tmp_path / "nope.jsonl")
