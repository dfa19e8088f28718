"""Prompt construction: exemplars come from the train split only, shot counts are exact."""

import json

import pytest

from data import ANSWER_PREFIX, EXEMPLARS, SHOT_COUNTS, STOP_STRINGS, build_prompt, chat_messages
from data.exemplars import GSM8K_EXEMPLARS

from tests.helpers.gsm8k import GSM8K_DIR, needs_gsm8k
from tests.tiny_model import byte_level_tokenizer

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


@needs_gsm8k
def test_exemplars_are_verbatim_train_rows_and_never_test_questions():
    train_lines = (GSM8K_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()
    test_questions = {json.loads(line)["question"].strip() for line in (GSM8K_DIR / "test.jsonl").open()}
    for exemplar in GSM8K_EXEMPLARS:
        row = json.loads(train_lines[exemplar["train_line"] - 1])
        assert row == {"question": exemplar["question"], "answer": exemplar["answer"]}
    assert len(EXEMPLARS) == 8
    assert not {question for question, _ in EXEMPLARS} & test_questions


def test_exemplar_solutions_end_with_the_answer_line():
    # First exemplar: Natalia sells 48 clips, then 48/2 = 24, so 48 + 24 = 72.
    assert EXEMPLARS[0][1].endswith(f"\n{ANSWER_PREFIX} 72")
    assert all("<<" not in solution and solution.count(ANSWER_PREFIX) == 1 for _, solution in EXEMPLARS)


@pytest.mark.parametrize("n_shot", SHOT_COUNTS)
def test_plain_prompt_has_exactly_n_exemplars_then_the_question(n_shot):
    prompt = build_prompt(QUESTION, n_shot, "plain")
    assert prompt.count("Question: ") == n_shot + 1
    assert prompt.count(ANSWER_PREFIX) == n_shot
    assert prompt.endswith(f"Question: {QUESTION}\nAnswer:")
    for question, solution in EXEMPLARS[:n_shot]:
        assert f"Question: {question}\nAnswer: {solution}\n\n" in prompt
    for question, _ in EXEMPLARS[n_shot:]:
        assert question not in prompt


def test_plain_one_shot_prompt_text():
    question, solution = EXEMPLARS[0]
    assert build_prompt(QUESTION, 1, "plain") == f"Question: {question}\nAnswer: {solution}\n\nQuestion: {QUESTION}\nAnswer:"


@pytest.mark.parametrize("n_shot", SHOT_COUNTS)
def test_chat_messages_alternate_exemplar_turns(n_shot):
    messages = chat_messages(QUESTION, n_shot)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * n_shot + ["user"]
    assert ANSWER_PREFIX in messages[0]["content"]
    assert messages[-1]["content"] == QUESTION


@pytest.mark.parametrize("n_shot", [0, 2, 8])
def test_chat_prompt_renders_with_the_models_template(n_shot):
    tokenizer = byte_level_tokenizer()  # the ChatML template SmolLM2 and Qwen use
    prompt = build_prompt(QUESTION, n_shot, "chat", tokenizer)
    assert prompt.count("<|im_start|>user") == n_shot + 1
    assert prompt.count("<|im_start|>assistant") == n_shot + 1  # n answers + the generation prompt
    assert prompt.endswith(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("n_shot", "style", "tokenizer", "message"),
    [
        (3, "plain", None, "n_shot=3"),
        (16, "plain", None, "n_shot=16"),
        ("2", "plain", None, "n_shot='2'"),
        (2, "instruct", None, "style='instruct'"),
        (2, "chat", None, "needs the model's tokenizer"),
    ],
)
def test_bad_prompt_arguments_are_errors(n_shot, style, tokenizer, message):
    with pytest.raises(ValueError, match=message):
        build_prompt(QUESTION, n_shot, style, tokenizer)



@pytest.mark.parametrize("n_shot", SHOT_COUNTS)
def test_stop_string_separates_plain_blocks_and_never_cuts_a_solution(n_shot):
    # A model that imitates the prompt ends its answer where the next block starts.
    assert build_prompt(QUESTION, n_shot, "plain").count(STOP_STRINGS[0]) == n_shot
    assert not any(stop in solution for _, solution in EXEMPLARS for stop in STOP_STRINGS)
