"""Tool calls read from the model's text, in the chat template's tool-call format.

Two readers, chosen once per tokenizer by `tool_call_reader`:
- the tokenizer's declared `response_template` (transformers' response parsing, which TRL also uses):
  `tokenizer.parse_response(text, prefix=...)`;
- otherwise Qwen2.5 / Hermes blocks, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, when the
  chat template renders an assistant tool call that way (Qwen2.5, Qwen3, Hermes, and CHATML_TOOL_TEMPLATE).
A template that renders no tool calls (SmolLM2's, for one) has no format to read: `tool_call_reader`
refuses it and names the fix.

A malformed call is data, not an exception: it comes back as a `ToolCall` with `error` set, which the
executor turns into the error message the model reads. The Hermes reader reads each block on its own,
so one broken call does not hide its well-formed neighbours; transformers' parser reads the turn as a
whole, so one broken call there makes the whole turn one malformed call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.DOTALL)
_CALL_FORMAT = '<tool_call>{"name": "<tool name>", "arguments": {<argument>: <value>, ...}}</tool_call>'
_PROBE_NAME = "probe_tool_7f3a"


@dataclass(frozen=True)
class ToolCall:
    """One call the model wrote. `error` is None for a readable call (then `name` is a string and
    `arguments` a dict); otherwise it says what is wrong, and `text` holds what the model wrote."""

    name: str | None
    arguments: dict | None
    error: str | None = None
    text: str = ""


@dataclass(frozen=True)
class AssistantTurn:
    """A finished assistant turn: its text outside tool calls, and the calls in the order written."""

    content: str
    calls: tuple[ToolCall, ...]

    def message(self) -> dict:
        """The turn as an assistant message for `apply_chat_template` (readable calls only, in the
        OpenAI/transformers shape the templates read)."""
        message = {"role": "assistant", "content": self.content}
        readable = [c for c in self.calls if c.error is None]
        if readable:
            message["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in readable
            ]
        return message


def _call_from_json(body: str) -> ToolCall:
    text = body.strip()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        return ToolCall(None, None, f"the tool call is not valid JSON ({error.msg} at character {error.pos}); "
                                    f"write {_CALL_FORMAT}", text)
    if not isinstance(payload, dict):
        return ToolCall(None, None, f"the tool call is a JSON {type(payload).__name__}, not an object; write "
                                    f"{_CALL_FORMAT}", text)
    return _call_from_fields(payload.get("name"), payload.get("arguments", {}), text)


def _call_from_fields(name, arguments, text: str) -> ToolCall:
    if not isinstance(name, str) or not name:
        return ToolCall(None, None, f"the tool call has no \"name\" string; write {_CALL_FORMAT}", text)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(name, None, f"the \"arguments\" of {name!r} must be a JSON object of argument names to "
                                    f"values, got a {type(arguments).__name__}; write {_CALL_FORMAT}", text)
    return ToolCall(name, arguments, None, text)


def parse_hermes(text: str) -> AssistantTurn:
    """Read Qwen2.5 / Hermes `<tool_call>{json}</tool_call>` blocks from an assistant turn's text.

    A block the turn leaves unclosed runs to the end of the text (the model stopped right after it).
    Content is the text outside the blocks, stripped."""
    calls = tuple(_call_from_json(match.group(1)) for match in _BLOCK.finditer(text))
    content = _BLOCK.sub("", text).strip()
    return AssistantTurn(content, calls)


def parse_with_response_template(tokenizer, text: str, prefix: str = "") -> AssistantTurn:
    """Read an assistant turn with the tokenizer's `response_template` (transformers' response parsing)."""
    try:
        parsed = tokenizer.parse_response(text, prefix=prefix)
    except ValueError as error:  # transformers' parser raises ValueError on any region it cannot read
        return AssistantTurn(text.strip(), (ToolCall(None, None, f"the tool call could not be read: {error}", text),))
    calls = []
    for call in parsed.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            calls.append(ToolCall(None, None, f"the tool call could not be read; write {_CALL_FORMAT}", str(call)))
            continue
        calls.append(_call_from_fields(function.get("name"), function.get("arguments", {}), json.dumps(function)))
    content = parsed.get("content") or ""
    return AssistantTurn(content.strip() if isinstance(content, str) else str(content), tuple(calls))


def renders_hermes_tool_calls(tokenizer, chat_template: str | None = None) -> bool:
    """Whether the chat template renders an assistant tool call as a Hermes `<tool_call>` block."""
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": _PROBE_NAME, "arguments": {}}}]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_template)
    return TOOL_CALL_OPEN in rendered and _PROBE_NAME in rendered


def tool_call_reader(tokenizer, chat_template: str | None = None) -> Callable[[str], AssistantTurn]:
    """The reader for this tokenizer's tool-call format: its `response_template` if it declares one,
    else the Hermes reader if the chat template renders tool calls as `<tool_call>` blocks."""
    if getattr(tokenizer, "response_template", None) is not None:
        try:  # a template the parser rejects is a setup error, not a malformed call on every turn
            tokenizer.parse_response("probe", prefix="")
        except ValueError as error:
            raise ValueError(f"tokenizer.response_template cannot parse a plain reply: {error}") from error
        return lambda text: parse_with_response_template(tokenizer, text)
    if renders_hermes_tool_calls(tokenizer, chat_template):
        return parse_hermes
    raise ValueError(
        "the chat template does not render assistant tool calls in a known format (no tokenizer.response_template, "
        "no <tool_call> blocks), so the model's calls cannot be read; use a tool-calling template, e.g. "
        "tokenizer.chat_template = grpo.environments.CHATML_TOOL_TEMPLATE for ChatML models (SmolLM2, Qwen), or set "
        "tokenizer.response_template (transformers' response-parsing docs)"
    )
