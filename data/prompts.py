"""n-shot prompts for math word problems, in plain-completion or chat-template style.

plain (base models), 2-shot:

    Question: <exemplar 1>
    Answer: <worked solution>
    #### The final answer is 72

    Question: <exemplar 2>
    Answer: ...

    Question: <the problem>
    Answer:

chat (instruct models): a system instruction asking for the answer line, then each exemplar
as a user/assistant turn pair, then the problem as the last user turn, rendered with the
tokenizer's own chat template and its generation prompt.

A task with its own answer format (multihop: data/multihop.py) passes its `instruction`: it
replaces the system instruction in chat style and opens the prompt in plain style. Such a task
takes n_shot=0, since the exemplars teach GSM8K's answer line.

The sampler (grpo.rollout) stops a completion at the first of STOP_STRINGS: in plain
style a base model that has answered goes on to invent the next "Question:".
"""

from __future__ import annotations

from data.exemplars import GSM8K_EXEMPLARS
from data.gsm8k import ANSWER_PREFIX, parse_gsm8k_row

SHOT_COUNTS = (0, 1, 2, 4, 8)
STOP_STRINGS = ("\nQuestion:",)
STYLES = ("plain", "chat")
CHAT_INSTRUCTION = (
    "Solve the math word problem step by step. "
    f"End your reply with a last line of the form '{ANSWER_PREFIX} N', where N is a number."
)

# (question, worked solution ending with the answer line), in prompt order.
EXEMPLARS = tuple(
    (parsed["question"], parsed["solution"])
    for parsed in map(parse_gsm8k_row, GSM8K_EXEMPLARS)
)
EXEMPLAR_QUESTIONS = frozenset(question for question, _ in EXEMPLARS)


def check_prompt_args(n_shot: int, style: str, tokenizer) -> None:
    if n_shot not in SHOT_COUNTS:
        raise ValueError(f"n_shot={n_shot!r} is not one of {SHOT_COUNTS}")
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not one of {STYLES}: 'plain' for base models, 'chat' for instruct models")
    if style == "chat" and tokenizer is None:
        raise ValueError("style='chat' needs the model's tokenizer (its apply_chat_template renders the turns)")


def chat_messages(question: str, n_shot: int, instruction: str = CHAT_INSTRUCTION) -> list[dict]:
    """The chat turns of an n-shot prompt: system instruction, exemplar pairs, the question."""
    messages = [{"role": "system", "content": instruction}]
    for exemplar_question, solution in EXEMPLARS[:n_shot]:
        messages.append({"role": "user", "content": exemplar_question})
        messages.append({"role": "assistant", "content": solution})
    messages.append({"role": "user", "content": question})
    return messages


def build_prompt(question: str, n_shot: int, style: str, tokenizer=None, instruction: str | None = None) -> str:
    """The exact text fed to the model for `question` with the first `n_shot` exemplars.

    instruction: the task's own answer-format instruction; None is GSM8K's (CHAT_INSTRUCTION in
    chat style, none in plain style, where the exemplars show the format).
    """
    check_prompt_args(n_shot, style, tokenizer)
    if style == "chat":
        return tokenizer.apply_chat_template(
            chat_messages(question, n_shot, CHAT_INSTRUCTION if instruction is None else instruction), tokenize=False,
            add_generation_prompt=True,
        )
    blocks = [] if instruction is None else [instruction]
    blocks += [f"Question: {q}\nAnswer: {solution}" for q, solution in EXEMPLARS[:n_shot]]
    blocks.append(f"Question: {question}\nAnswer:")
    return "\n\n".join(blocks)

