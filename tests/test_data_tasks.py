"""load_task and friends: the seeded split, the three task sources, JSONL round trips, HumanEval."""

import json
import re

import pytest

from data import (
    ANSWER_PREFIX,
    EXEMPLARS,
    BadRowError,
    generate_synthetic,
    load_humaneval,
    load_task,
    read_jsonl,
    split_train_validation,
    write_jsonl,
)
from data.prepare import main as prepare_main

from tests.helpers.gsm8k import GSM8K_DIR, needs_gsm8k


def numbered_rows(n):
    return [{"id": i} for i in range(n)]


def test_split_is_90_10_disjoint_complete_and_order_preserving():
    rows = numbered_rows(1000)
    train, validation = split_train_validation(rows, 0.1, seed=0)
    assert (len(train), len(validation)) == (900, 100)
    train_ids, val_ids = [r["id"] for r in train], [r["id"] for r in validation]
    assert sorted(train_ids + val_ids) == list(range(1000))
    assert train_ids == sorted(train_ids) and val_ids == sorted(val_ids)
    assert rows == numbered_rows(1000)  # input untouched


def test_split_is_fixed_by_the_seed():
    rows = numbered_rows(200)
    assert split_train_validation(rows, 0.1, seed=0) == split_train_validation(rows, 0.1, seed=0)
    assert split_train_validation(rows, 0.1, seed=0)[1] != split_train_validation(rows, 0.1, seed=1)[1]


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(7465, 0.1, 746), (10, 0.25, 2), (10, 0.0, 0), (3, 0.1, 0)],
    ids=["gsm8k-half-to-even", "quarter-half-to-even", "zero-fraction", "rounds-down-to-zero"],
)
def test_split_sizes_round_to_nearest(n, fraction, n_val):
    # 7465 * 0.1 = 746.5 -> 746 (round half to even); 10 * 0.25 = 2.5 -> 2; 3 * 0.1 = 0.3 -> 0.
    assert len(split_train_validation(numbered_rows(n), fraction, seed=0)[1]) == n_val


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5], ids=["negative", "one", "above-one"])
def test_split_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match=f"val_fraction={fraction}"):
        split_train_validation(numbered_rows(10), fraction, seed=0)


@needs_gsm8k
def test_gsm8k_task_from_local_files():
    splits = load_task(
        "gsm8k", n_shot=2, style="plain",
        train_file=GSM8K_DIR / "train.jsonl", test_file=GSM8K_DIR / "test.jsonl",
    )
    # 7473 train rows - 8 exemplars = 7465; 10% held out = round(746.5) = 746.
    assert {k: len(v) for k, v in splits.items()} == {"train": 6719, "validation": 746, "test": 1319}
    exemplar_questions = {question for question, _ in EXEMPLARS}
    train_questions = {row["question"] for row in splits["train"] + splits["validation"]}
    assert not train_questions & exemplar_questions
    assert not train_questions & {row["question"] for row in splits["test"]}
    first_test = splits["test"][0]
    assert set(first_test) == {"question", "answer", "solution", "prompt"}
    assert first_test["question"].startswith("Janet’s ducks lay 16 eggs")
    assert first_test["answer"] == "18"
    assert first_test["prompt"].count("Question: ") == 3
    assert first_test["prompt"].endswith(f"Question: {first_test['question']}\nAnswer:")


@needs_gsm8k
def test_gsm8k_limits_take_the_first_rows():
    full = load_task("gsm8k", n_shot=0, style="plain",
                     train_file=GSM8K_DIR / "train.jsonl", test_file=GSM8K_DIR / "test.jsonl")
    limited = load_task("gsm8k", n_shot=0, style="plain", limit_train=5, limit_eval=3,
                        train_file=GSM8K_DIR / "train.jsonl", test_file=GSM8K_DIR / "test.jsonl")
    assert {k: len(v) for k, v in limited.items()} == {"train": 5, "validation": 3, "test": 3}
    assert all(limited[k] == full[k][: len(limited[k])] for k in limited)


def test_gsm8k_with_only_one_local_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="needs both train_file and test_file"):
        load_task("gsm8k", n_shot=0, style="plain", train_file=tmp_path / "train.jsonl")


def test_gsm8k_bad_row_in_a_local_file(tmp_path):
    good = json.dumps({"question": "What is 2 + 2?", "answer": "#### 4"})
    (tmp_path / "train.jsonl").write_text("\n".join([good] * 9 + ['{"question": "q"}']) + "\n", encoding="utf-8")
    (tmp_path / "test.jsonl").write_text(good + "\n", encoding="utf-8")
    files = {"train_file": tmp_path / "train.jsonl", "test_file": tmp_path / "test.jsonl"}
    with pytest.raises(BadRowError, match="line 10: missing or empty field 'answer'"):
        load_task("gsm8k", n_shot=0, style="plain", **files)
    splits = load_task("gsm8k", n_shot=0, style="plain", on_bad_row="skip", **files)
    assert len(splits["train"]) + len(splits["validation"]) == 9


@pytest.mark.parametrize("difficulty", [1, 2, 3], ids=["difficulty-1", "difficulty-2", "difficulty-3"])
def test_synthetic_problems_are_distinct_deterministic_and_verifiable(difficulty):
    rows = generate_synthetic(3000, difficulty=difficulty, seed=0)
    assert len({row["question"] for row in rows}) == 3000
    assert rows == generate_synthetic(3000, difficulty=difficulty, seed=0)
    assert rows != generate_synthetic(3000, difficulty=difficulty, seed=1)
    for row in rows:
        assert int(row["answer"]) >= 0
        assert row["solution"].endswith(f"\n{ANSWER_PREFIX} {row['answer']}")
        # Each worked step "a op b = c" is true arithmetic, and the last one gives the answer.
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", row["solution"])
        assert len(steps) == {1: 1, 2: 2, 3: 2}[difficulty]
        for a, op, b, c in steps:
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c)
        assert steps[-1][3] == row["answer"]


def test_synthetic_difficulty_3_always_multiplies():
    assert all(" * " in row["solution"] for row in generate_synthetic(200, difficulty=3, seed=0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"difficulty": 4}, "difficulty=4"), ({"n": -1}, "n=-1")],
    ids=["unknown-difficulty", "negative-count"],
)
def test_synthetic_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic(**{"n": 10, **kwargs})


def test_synthetic_task_splits_and_prompts():
    splits = load_task("synthetic", n_shot=0, style="plain", difficulty=2, num_synthetic=100, limit_eval=4)
    assert {k: len(v) for k, v in splits.items()} == {"train": 90, "validation": 4}
    row = splits["train"][0]
    assert row["prompt"] == f"Question: {row['question']}\nAnswer:"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"name": "math"}, "task 'math'", id="unknown-task"),
        pytest.param({"name": "synthetic", "n_shot": 5}, "n_shot=5", id="unsupported-shot-count"),
        pytest.param({"name": "synthetic", "on_bad_row": "ignore"}, "on_bad_row='ignore'", id="unknown-bad-row-policy"),
        pytest.param({"name": "synthetic", "limit_train": 0}, "limit_train=0", id="zero-train-limit"),
        pytest.param({"name": "synthetic", "limit_eval": 2.5}, "limit_eval=2.5", id="fractional-eval-limit"),
        pytest.param({"name": "jsonl"}, "needs train_file", id="jsonl-without-train-file"),
    ],
)
def test_load_task_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_task(**{"n_shot": 0, "style": "plain", **kwargs})


def test_prepare_writes_splits_that_load_back_as_jsonl_task(tmp_path):
    written = prepare_main(["--task", "synthetic", "--num-synthetic", "50", "--n-shot", "1", "--out", str(tmp_path)])
    assert sorted(p.name for p in written.values()) == ["train.jsonl", "validation.jsonl"]
    expected = load_task("synthetic", n_shot=1, style="plain", num_synthetic=50)
    assert read_jsonl(tmp_path / "train.jsonl") == expected["train"]
    loaded = load_task("jsonl", n_shot=0, style="plain",
                       train_file=tmp_path / "train.jsonl", validation_file=tmp_path / "validation.jsonl")
    assert loaded == expected  # a prepared file keeps its prompts: n_shot/style do not rebuild them


def test_jsonl_task_checks_prompt_and_answer(tmp_path):
    path = write_jsonl([{"prompt": "2+2=", "answer": 4}, {"prompt": "", "answer": "1"}], tmp_path / "p.jsonl")
    with pytest.raises(BadRowError, match="line 2: missing or empty field 'prompt'"):
        load_task("jsonl", n_shot=0, style="plain", train_file=path)
    splits = load_task("jsonl", n_shot=0, style="plain", train_file=path, on_bad_row="skip", val_fraction=0.0)
    assert splits == {"train": [{"prompt": "2+2=", "answer": "4"}], "validation": []}


def test_write_then_read_jsonl_round_trips_unicode(tmp_path):
    rows = [{"question": "Janet’s ducks – 16 eggs", "answer": "18"}, {"question": "", "answer": "-0.5"}]
    path = write_jsonl(rows, tmp_path / "nested" / "rows.jsonl")
    assert read_jsonl(path) == rows
    assert "’" in path.read_text(encoding="utf-8")


def test_humaneval_ships_in_the_wheel():
    problems = load_humaneval()
    assert len(problems) == 164
    first = problems[0]
    assert first["task_id"] == "HumanEval/0" and first["entry_point"] == "has_close_elements"
    assert set(first) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    assert f"def {first['entry_point']}(" in first["prompt"] and "def check(candidate)" in first["test"]


def test_gsm8k_from_the_hub_uses_openai_gsm8k_main(monkeypatch):
    # Offline stand-in for datasets.load_dataset: the hub rows have the local files' shape.
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return [{"question": f"{split} question {i}?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
                for i in range(10)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_task("gsm8k", n_shot=0, style="plain", val_fraction=0.2)
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "validation": 2, "test": 10}
    assert splits["test"][3]["answer"] == "4" and splits["test"][3]["solution"].startswith("3 + 1 = 4\n")


def test_hub_bad_row_names_the_split_and_row(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, name, split: [{"question": "q?", "answer": "#### 1"}, {"question": "q?", "answer": "1"}])
    with pytest.raises(BadRowError, match="openai/gsm8k:train, line 2"):
        load_task("gsm8k", n_shot=0, style="plain")
