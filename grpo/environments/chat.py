"""Token ids of an episode's prompt and of what follows each assistant turn, from the chat template.

Token in, token out: the ids the model sampled are kept as sampled; what the environment adds after a
turn (the tool messages and the next assistant header) is rendered by the chat template and appended
as ids. `continuation_ids` computes those ids as the difference between rendering the conversation
without and with the new messages, so no sampled id is ever re-tokenized.

The sampled turn ends with the template's end-of-turn token (e.g. `<|im_end|>`, which the sampler
stops at); the template writes more after it (ChatML: a newline) that the model never sampled. So the
rendering without the new messages is cut just after its last end-of-turn token, and everything the
template renders after that point is the continuation (TRL's `_get_tool_suffix_ids` does the same).

CHATML_TOOL_TEMPLATE is a ChatML template in Qwen2.5's tool-calling style (tool schemas in the system
turn, calls as `<tool_call>` blocks, results as `<tool_response>` blocks in a user turn), for ChatML
models whose own template renders no tools (SmolLM2's). HERMES_RESPONSE_TEMPLATE declares that format
to transformers' response parser, so TRL's GRPOTrainer can read calls made in it.
"""

from __future__ import annotations

from collections.abc import Sequence

CHATML_TOOL_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '"
    " + '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": '"
    " + '<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- set call = call.function if call.function is defined else call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' + (call.arguments | tojson) + '}"
    "\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# transformers' declarative response parsing for the format above (the shape of its Qwen2 entry).
HERMES_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open_pattern": r"\s*<tool_call>",
            "close": "</tool_call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text"},
    },
}

_SENTINEL = "sentinel_reply_5c1d"


def render_ids(tokenizer, messages: Sequence[dict], tools: Sequence[dict] | None = None,
               add_generation_prompt: bool = False, chat_template: str | None = None) -> list[int]:
    """`messages` rendered by the chat template and tokenized: a flat list of ids. `tools=None` for none
    (an empty list makes some templates write an empty tool preamble)."""
    ids = tokenizer.apply_chat_template(
        list(messages), tools=list(tools) if tools else None, add_generation_prompt=add_generation_prompt,
        tokenize=True, return_dict=False, chat_template=chat_template,
    )
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def prompt_ids(tokenizer, messages: Sequence[dict], tools: Sequence[dict] | None = None,
               chat_template: str | None = None) -> list[int]:
    """The ids an episode starts from: the prompt messages, the tool schemas, the assistant header."""
    return render_ids(tokenizer, messages, tools, add_generation_prompt=True, chat_template=chat_template)


def end_of_turn(tokenizer, chat_template: str | None = None) -> tuple[str, int]:
    """(text, id): what the template writes right after an assistant message's content, and the id of
    the token that ends the turn (the first token of that text; the sampler stops on it).

    ChatML gives ("<|im_end|>\\n", id of <|im_end|>). Raises when that token is not a single special
    token, since a turn could then not end on one sampled id."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_template)
    after = text[text.rindex(_SENTINEL) + len(_SENTINEL):]
    ids = tokenizer.encode(after, add_special_tokens=False)
    if not ids or ids[0] not in tokenizer.all_special_ids:
        raise ValueError(
            f"the chat template ends an assistant message with {after!r}, which does not start with a special "
            f"token; a turn must end on one special token (like <|im_end|>) for the rollout to stop on it"
        )
    return after, ids[0]


def continuation_ids(tokenizer, messages: Sequence[dict], new_messages: Sequence[dict],
                     tools: Sequence[dict] | None = None, chat_template: str | None = None) -> list[int]:
    """Ids to append after a sampled assistant turn: the template's rendering of `new_messages` (tool
    results) and the next assistant header.

    messages: the conversation so far, ending with the assistant message of the sampled turn (as
        `AssistantTurn.message()` gives it); its rendering must contain the end-of-turn token.
    new_messages: what follows, e.g. [{"role": "tool", "name": ..., "content": ...}, ...].
    Raises when the template renders the earlier messages differently once new ones follow (it is not
    prefix-preserving), since the difference would then not be a continuation."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("the last message must be the assistant turn the new messages answer, got "
                         f"{messages[-1] if messages else 'no messages'!r:.80}")
    _, end_id = end_of_turn(tokenizer, chat_template)
    before = render_ids(tokenizer, messages, tools, chat_template=chat_template)
    after = render_ids(tokenizer, list(messages) + list(new_messages), tools, add_generation_prompt=True,
                       chat_template=chat_template)
    if end_id not in before:
        raise ValueError(f"the rendered conversation has no end-of-turn token {end_id}")
    cut = len(before) - before[::-1].index(end_id)
    if after[:cut] != before[:cut]:
        raise ValueError("the chat template renders the conversation differently once the new messages follow "
                         "(it is not prefix-preserving); the continuation cannot be appended as ids")
    return after[cut:]
