"""Every registered reward takes TRL's call: conversational completions and TRL's keyword arguments,
checked as a table and through one real step of TRL's GRPOTrainer."""

import math

import pytest

import rewards
from tests.helpers import train_with_digit_reward  # noqa: F401  (registers "digit_share")

ANSWER_LINE = "Two plus two.\n#### The final answer is 4"
CODE = "```python\ndef add(a, b):\n    return a + b\n```"
# Each reward with the columns it reads and completions it scores differently.
CASES = {
    "gsm8k_format": ({}, [ANSWER_LINE, "no answer"]),
    "gsm8k_correctness": ({"answer": ["4", "4"]}, [ANSWER_LINE, "#### The final answer is 5"]),
    "math_verify": ({"answer": ["4", "4"]}, ["so \\boxed{4}", "so \\boxed{5}"]),
    "keywords": ({"keywords": [["apple"], ["apple"]]}, ["I like an apple a lot today", "nothing here at all"]),
    "code_execution": ({"test": ["def check(f):\n    assert f(1, 2) == 3\n"] * 2, "entry_point": ["add"] * 2},
                       [CODE, "no code"]),
    "majority_vote": ({"prompts": ["p", "p"]}, ["#### The final answer is 4", "#### The final answer is 4"]),
    "digit_share": ({}, ["1234", "abcd"]),
    "has_letter_e": ({}, ["e", "a"]),
    "slow_digit_share": ({}, ["1234", "abcd"]),
    "tool_call_format": ({"env_calls": [2, 0], "env_invalid": [1, 0]}, ["a", "b"]),
    "multihop_answer": ({"answer": ["Kestia", "Kestia"]}, ["Rivoford is in Kestia.\nFinal answer: Kestia",
                                                           "Final answer: Dunmere"]),
    "multihop_rubric": ({"answer": ["Kestia", "Kestia"], "path": [["Rivoford"], ["Rivoford"]]},
                        ["Rivoford is located in Kestia.\nFinal answer: Kestia", "Final answer: Kestia"]),
    "reasoning_gym": ({"answer": ["4", "4"], "metadata": [{"source_dataset": "basic_arithmetic"}] * 2},
                      ["2 + 2 <answer>4</answer>", "<answer>5</answer>"]),
}
TRL_KEYWORDS = {"completion_ids": [[1, 2], [3]], "trainer_state": object(), "log_extra": None, "log_metric": None}


def test_every_registered_reward_has_a_case_here():
    assert set(rewards.names()) <= set(CASES), set(rewards.names()) - set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_conversational_completions_and_trl_keywords_score_as_plain_text(name):
    columns, texts = CASES[name]
    reward = rewards.get(name)
    plain = reward(texts, **columns)
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    with_system = [[{"role": "system", "content": "ignored"}, {"role": "assistant", "content": t}] for t in texts]
    extra = {"prompts": [[{"role": "user", "content": "q"}]] * len(texts), **TRL_KEYWORDS}
    extra.update(columns)  # a reward that reads `prompts` gets its own column
    for completions in (chats, with_system):
        scored = reward(completions, **extra)
        assert [None if s is None or math.isnan(s) else s for s in scored] == plain


@pytest.mark.parametrize("bad, message", [
    pytest.param([7], "completion 0 is 7", id="an-int"),
    pytest.param(["ok", [{"role": "assistant"}]], "completion 1", id="message-without-content"),
    pytest.param([[{"role": "assistant", "content": 3}]], "completion 0", id="content-not-a-string"),
    pytest.param([[]], "completion 0", id="empty-conversation"),
])
def test_other_completions_are_a_type_error_naming_the_row_and_the_forms(bad, message):
    for name in ("gsm8k_format", "keywords"):
        columns = {"keywords": [["x"]] * len(bad)} if name == "keywords" else {}
        with pytest.raises(TypeError, match=f"{message}.*a string or a list of messages"):
            rewards.get(name)(bad, **columns)


def test_one_trl_grpo_step_with_our_rewards_scores_as_on_the_extracted_texts(tiny_model_dir, tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    calls = []

    def recorded(name):
        reward = rewards.get(name)

        def fn(completions, **kwargs):
            scores = reward(completions, **kwargs)
            calls.append((name, completions, kwargs, scores))
            return scores
        fn.__name__ = name
        return fn

    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)} for i in range(4)]
    config = trl.GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        max_steps=1, learning_rate=1e-4, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
        beta=0.0, gradient_checkpointing=False,
    )
    trainer = trl.GRPOTrainer(model=tiny_model_dir, reward_funcs=[recorded("gsm8k_format"),
                                                                 recorded("gsm8k_correctness")],
                              args=config, train_dataset=Dataset.from_list(rows))
    trainer.train()
    assert {name for name, *_ in calls} == {"gsm8k_format", "gsm8k_correctness"}
    for name, completions, kwargs, scores in calls:
        assert all(isinstance(c, list) and c[-1]["role"] == "assistant" for c in completions)  # conversational
        texts = [c[-1]["content"] for c in completions]
        columns = {"answer": kwargs["answer"]} if name == "gsm8k_correctness" else {}
        assert scores == rewards.get(name)(texts, **columns)
