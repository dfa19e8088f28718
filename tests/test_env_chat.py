"""Reading tool calls from a turn's text, and the ids appended after a turn (token in, token out)."""

import re

import pytest

from grpo.environments import (
    CHATML_TOOL_TEMPLATE, HERMES_RESPONSE_TEMPLATE, AssistantTurn, ToolCall, continuation_ids, end_of_turn,
    parse_hermes, prompt_ids, render_ids, tool_call_reader,
)
from grpo.environments.tool_calls import parse_with_response_template
from tests.tiny_model import byte_level_tokenizer

FORMAT_HINT = '<tool_call>{"name": "<tool name>", "arguments": {<argument>: <value>, ...}}</tool_call>'
GUESS_SCHEMA = {"type": "function", "function": {
    "name": "guess", "description": "Guess.",
    "parameters": {"type": "object", "properties": {"number": {"type": "integer", "description": "n"}},
                   "required": ["number"]}}}


def ok(name, arguments, text):
    return ToolCall(name, arguments, None, text)


@pytest.mark.parametrize("text, content, calls", [
    pytest.param("The answer is 4.", "The answer is 4.", (), id="no-call"),
    pytest.param("", "", (), id="empty"),
    pytest.param('<tool_call>\n{"name": "guess", "arguments": {"number": 5}}\n</tool_call>', "",
                 (ok("guess", {"number": 5}, '{"name": "guess", "arguments": {"number": 5}}'),), id="one-call"),
    pytest.param('Let me check.\n<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
                 '<tool_call>{"name": "b", "arguments": {"x": [1, 2]}}</tool_call>', "Let me check.",
                 (ok("a", {}, '{"name": "a", "arguments": {}}'), ok("b", {"x": [1, 2]}, '{"name": "b", "arguments": '
                                                                                       '{"x": [1, 2]}}')),
                 id="two-calls-after-text"),
    pytest.param('<tool_call>{"name": "a"}</tool_call>', "", (ok("a", {}, '{"name": "a"}'),),
                 id="no-arguments-means-none"),
    pytest.param('<tool_call>{"name": "a", "arguments": null}</tool_call>', "",
                 (ok("a", {}, '{"name": "a", "arguments": null}'),), id="null-arguments-means-none"),
    pytest.param('<tool_call>{"name": "a", "arguments": {"x": 1}}', "", (ok("a", {"x": 1}, '{"name": "a", '
                                                                                          '"arguments": {"x": 1}}'),),
                 id="unclosed-last-block"),
    pytest.param('</tool_call> stray close', "</tool_call> stray close", (), id="stray-close-is-text"),
])
def test_hermes_reads_well_formed_turns(text, content, calls):
    assert parse_hermes(text) == AssistantTurn(content, calls)


@pytest.mark.parametrize("body, error", [
    pytest.param('{"name": "a", "arguments": {"x": 1}', "not valid JSON", id="truncated-json"),
    pytest.param("{name: a}", "not valid JSON", id="unquoted-keys"),
    pytest.param("", "not valid JSON", id="empty-block"),
    pytest.param("[1, 2]", "is a JSON list, not an object", id="json-list"),
    pytest.param('"guess"', "is a JSON str, not an object", id="json-string"),
    pytest.param('{"arguments": {}}', 'has no "name" string', id="no-name"),
    pytest.param('{"name": 7}', 'has no "name" string', id="name-not-string"),
    pytest.param('{"name": ""}', 'has no "name" string', id="empty-name"),
    pytest.param('{"name": "a", "arguments": "{\\"x\\": 1}"}', 'must be a JSON object.*got a str',
                 id="arguments-as-string"),
    pytest.param('{"name": "a", "arguments": [1]}', "must be a JSON object.*got a list", id="arguments-as-list"),
])
def test_hermes_turns_a_malformed_call_into_an_error_and_keeps_its_neighbours(body, error):
    text = f'<tool_call>{body}</tool_call><tool_call>{{"name": "b", "arguments": {{}}}}</tool_call>'
    turn = parse_hermes(text)
    bad, good = turn.calls
    assert bad.error is not None and re.search(error, bad.error), bad.error
    assert bad.text == body.strip()
    assert good == ok("b", {}, '{"name": "b", "arguments": {}}')
    assert FORMAT_HINT in bad.error
    # only the readable call goes into the assistant message the template renders
    assert turn.message()["tool_calls"] == [{"type": "function", "function": {"name": "b", "arguments": {}}}]


def test_a_megabyte_of_open_tags_is_one_malformed_call():
    turn = parse_hermes("<tool_call>" * 100_000)
    assert len(turn.calls) == 1 and turn.calls[0].error is not None


@pytest.fixture
def chatml():
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = CHATML_TOOL_TEMPLATE
    return tokenizer


def test_the_reader_follows_what_the_tokenizer_declares(chatml):
    assert tool_call_reader(chatml) is parse_hermes  # the template renders <tool_call> blocks
    plain = byte_level_tokenizer()  # the tiny model's own template renders no tool calls
    with pytest.raises(ValueError, match="CHATML_TOOL_TEMPLATE"):
        tool_call_reader(plain)
    chatml.response_template = HERMES_RESPONSE_TEMPLATE
    read = tool_call_reader(chatml)
    assert read is not parse_hermes
    assert read('ok <tool_call>\n{"name": "guess", "arguments": {"number": 3}}\n</tool_call>') == AssistantTurn(
        "ok", (ToolCall("guess", {"number": 3}, None, '{"name": "guess", "arguments": {"number": 3}}'),))
    chatml.response_template = {"fields": {}}
    with pytest.raises(ValueError, match="response_template cannot parse"):
        tool_call_reader(chatml)


@pytest.mark.parametrize("text, error", [
    pytest.param('<tool_call>{"name": "a", "arguments": {"x": }</tool_call>', "could not be read", id="bad-json"),
    pytest.param("<tool_call>[1]</tool_call>", "could not be read", id="not-an-object"),
    pytest.param('<tool_call>{"arguments": {}}</tool_call>', 'no "name" string', id="no-name"),
])
def test_response_template_reader_turns_malformed_calls_into_errors(chatml, text, error):
    chatml.response_template = HERMES_RESPONSE_TEMPLATE
    (call,) = parse_with_response_template(chatml, text).calls
    assert call.error is not None and error in call.error


def test_end_of_turn_is_the_chatml_end_token(chatml):
    assert end_of_turn(chatml) == ("<|im_end|>\n", chatml.convert_tokens_to_ids("<|im_end|>"))


def _sampled(tokenizer, text: str) -> list[int]:
    """The ids a model would sample for a turn: its text, then the end-of-turn token it stops on."""
    return tokenizer.encode(text, add_special_tokens=False) + [end_of_turn(tokenizer)[1]]


def _token_in_token_out(tokenizer, tools):
    """Build a three-turn episode from ids alone; it must equal the template's rendering of the whole
    conversation, so the trained sequence is exactly what a model would see in one pass."""
    read = tool_call_reader(tokenizer)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Find the number."}]
    ids = prompt_ids(tokenizer, messages, tools)
    turns = [
        ('<tool_call>\n{"name": "guess", "arguments": {"number": 10}}\n</tool_call>', ["higher"]),
        ('Closer.\n<tool_call>\n{"name": "guess", "arguments": {"number": 15}}\n</tool_call>\n'
         '<tool_call>\n{"name": "guess", "arguments": {"number": 17}}\n</tool_call>', ["lower", "correct"]),
    ]
    model_mask = [0] * len(ids)
    for text, results in turns:
        sampled = _sampled(tokenizer, text)
        ids += sampled
        model_mask += [1] * len(sampled)
        turn = read(text)
        new = [{"role": "tool", "name": c.name, "content": r} for c, r in zip(turn.calls, results)]
        extra = continuation_ids(tokenizer, messages + [turn.message()], new, tools)
        ids += extra
        model_mask += [0] * len(extra)
        messages += [turn.message(), *new]
    final = "It is 17."
    sampled = _sampled(tokenizer, final)
    ids += sampled
    model_mask += [1] * len(sampled)
    messages.append({"role": "assistant", "content": final})
    whole = render_ids(tokenizer, messages, tools)
    end_id = end_of_turn(tokenizer)[1]
    assert ids == whole[:len(whole) - whole[::-1].index(end_id)]
    return ids, model_mask


def test_ids_built_turn_by_turn_equal_the_whole_conversation_rendered_once(chatml):
    ids, mask = _token_in_token_out(chatml, [GUESS_SCHEMA])
    model_text = chatml.decode([i for i, m in zip(ids, mask) if m])
    assert "<tool_response>" not in model_text and "Find the number" not in model_text  # only sampled ids are 1
    assert model_text.count("<|im_end|>") == 3


def test_the_demo_models_tokenizer_with_the_chatml_tool_template():
    """SmolLM2's own template renders no tools and drops assistant tool_calls (so it cannot read calls);
    its ChatML tokens take CHATML_TOOL_TEMPLATE, with which token in, token out holds."""
    from transformers import AutoTokenizer

    from grpo.runtime.model import demo_model_dir

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir())
    with pytest.raises(ValueError, match="does not render assistant tool calls"):
        tool_call_reader(tokenizer)
    tokenizer.chat_template = CHATML_TOOL_TEMPLATE
    assert tool_call_reader(tokenizer) is parse_hermes
    _token_in_token_out(tokenizer, [GUESS_SCHEMA])


def test_a_template_that_rewrites_history_is_refused(chatml):
    # renders the assistant's turn differently once a tool message follows it (not prefix-preserving)
    chatml.chat_template = CHATML_TOOL_TEMPLATE.replace(
        "{{- '<|im_start|>assistant' }}", "{{- '<|im_start|>' + ('model' if not loop.last else 'assistant') }}")
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "guess", "arguments": {"number": 1}}}]}]
    with pytest.raises(ValueError, match="not prefix-preserving"):
        continuation_ids(chatml, messages, [{"role": "tool", "name": "guess", "content": "higher"}])


def test_a_conversation_without_an_assistant_turn_is_refused(chatml):
    tool = [{"role": "tool", "name": "guess", "content": "higher"}]
    for messages in ([], [{"role": "user", "content": "q"}]):
        with pytest.raises(ValueError, match="the last message must be the assistant turn"):
            continuation_ids(chatml, messages, tool)
