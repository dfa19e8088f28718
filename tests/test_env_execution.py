"""Every bad call the model can make gives it an error message and a counted outcome, never a crash or a hang."""

import threading
import time

import pytest

from grpo.environments import (
    EnvironmentFailure, ToolCall, ToolExecutor, Toolbox, check_arguments, count_outcomes, load_environments,
    parse_hermes, start_episodes, tool_schema,
)

RELEASE = threading.Event()  # set at the end of the module so hung tool threads finish


def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def scale(values: list[float], factor: float | None = None, mode: str = "up") -> str:
    """Scale numbers.

    Args:
        values: The numbers.
        factor: The factor, or null for 2.
        mode: Which way (choices: ["up", "down"])
    """
    factor = 2.0 if factor is None else factor
    return str([v * factor if mode == "up" else v / factor for v in values])


def divide(a: int, b: int) -> float:
    """Divide.

    Args:
        a: Numerator.
        b: Denominator.
    """
    return a / b


def hang(seconds: float) -> str:
    """Wait (a tool that hangs until the test module ends).

    Args:
        seconds: Ignored.
    """
    RELEASE.wait(60)
    return "woke up"


async def fetch(key: str) -> str:
    """An async tool.

    Args:
        key: What to fetch.
    """
    return f"value of {key}"


TOOLS = {f.__name__: f for f in (add, scale, divide, hang, fetch)}


def toolbox() -> Toolbox:
    return Toolbox.of(TOOLS, [tool_schema(f, "test") for f in TOOLS.values()])


def teardown_module():
    RELEASE.set()


def one(call: ToolCall, executor: ToolExecutor | None = None):
    (result,) = (executor or ToolExecutor(timeout_s=5.0)).run([(toolbox(), [call])])[0]
    return result


@pytest.mark.parametrize("text, outcome, message", [
    pytest.param('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', "ok", "3", id="well-formed-unclosed"),
    pytest.param('<tool_call>{"name": "add", "arguments": {"a": 1, "b": }}</tool_call>', "malformed",
                 "Error: the tool call is not valid JSON", id="malformed-json"),
    pytest.param("<tool_call>[1]</tool_call>", "malformed", "is a JSON list, not an object", id="json-not-object"),
    pytest.param('<tool_call>{"name": "mul", "arguments": {}}</tool_call>', "unknown_tool",
                 "Error: there is no tool 'mul'; the tools are add, divide, fetch, hang, scale", id="unknown-tool"),
    pytest.param('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', "bad_arguments",
                 "Error: add is missing required argument(s) ['b']; its arguments are ['a', 'b']", id="missing-argument"),
    pytest.param('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}}</tool_call>', "bad_arguments",
                 "Error: add has no argument(s) ['c']; its arguments are ['a', 'b']", id="extra-argument"),
    pytest.param('<tool_call>{"name": "add", "arguments": {"a": "1", "b": 2}}</tool_call>', "bad_arguments",
                 "Error: argument 'a' of add must be integer, got string '1'", id="string-for-integer"),
    pytest.param('<tool_call>{"name": "add", "arguments": {"a": 1.5, "b": 2}}</tool_call>', "bad_arguments",
                 "must be integer, got number 1.5", id="float-for-integer"),
    pytest.param('<tool_call>{"name": "add", "arguments": {"a": true, "b": 2}}</tool_call>', "bad_arguments",
                 "must be integer, got boolean True", id="bool-for-integer"),
    pytest.param('<tool_call>{"name": "add", "arguments": {"a": null, "b": 2}}</tool_call>', "bad_arguments",
                 "must be integer, got null None", id="null-for-integer"),
    pytest.param('<tool_call>{"name": "scale", "arguments": {"values": [1, "x"]}}</tool_call>', "bad_arguments",
                 "argument 'values' of scale[1] must be number, got string 'x'", id="bad-list-item"),
    pytest.param('<tool_call>{"name": "scale", "arguments": {"values": 3}}</tool_call>', "bad_arguments",
                 "must be array, got integer 3", id="scalar-for-list"),
    pytest.param('<tool_call>{"name": "scale", "arguments": {"values": [1], "mode": "sideways"}}</tool_call>',
                 "bad_arguments", "must be one of ['up', 'down'], got 'sideways'", id="not-in-enum"),
    pytest.param('<tool_call>{"name": "scale", "arguments": {"values": [1, 2.5], "factor": null}}</tool_call>', "ok",
                 "[2.0, 5.0]", id="nullable-and-int-for-number"),
    pytest.param('<tool_call>{"name": "divide", "arguments": {"a": 1, "b": 0}}</tool_call>', "raised",
                 "Error: divide raised ZeroDivisionError: division by zero (at divide, line", id="tool-raises"),
    pytest.param('<tool_call>{"name": "fetch", "arguments": {"key": "k"}}</tool_call>', "ok", "value of k",
                 id="async-tool"),
])
def test_each_call_gives_the_model_a_result_and_an_outcome(text, outcome, message):
    (call,) = parse_hermes(text).calls
    result = one(call)
    assert result.outcome == outcome
    assert message in result.content, result.content
    assert result.message() == {"role": "tool", "name": result.name, "content": result.content}


def test_a_hanging_tool_times_out_skips_the_rest_of_its_turn_and_blocks_its_environment():
    executor = ToolExecutor(timeout_s=0.3)
    box, other = toolbox(), toolbox()
    calls = [ToolCall("hang", {"seconds": 1.0}), ToolCall("add", {"a": 1, "b": 1})]
    began = time.monotonic()
    hung_row, other_row = executor.run([(box, calls), (other, [ToolCall("add", {"a": 2, "b": 2})])])
    assert time.monotonic() - began < 3.0  # the limit, not the tool, decides
    assert [r.outcome for r in hung_row] == ["timeout", "skipped"]
    assert hung_row[0].content == "Error: hang did not finish within its time limit of 0.3 s"
    assert other_row[0].content == "4"  # another row is not held up
    # next turn: the abandoned call still runs, so this environment refuses calls; the other one answers
    (busy,), (fine,) = executor.run([(box, [ToolCall("add", {"a": 1, "b": 1})]), (other, [ToolCall("add", {"a": 1,
                                                                                                           "b": 1})])])
    assert busy.outcome == "busy" and "still busy" in busy.content and fine.content == "2"


def test_too_many_hung_calls_is_an_environment_failure():
    executor = ToolExecutor(timeout_s=0.2, max_abandoned=2)
    jobs = [(toolbox(), [ToolCall("hang", {"seconds": 1.0})]) for _ in range(3)]
    with pytest.raises(EnvironmentFailure, match="3 tool calls are still running") as raised:
        executor.run(jobs)
    assert "RELEASE.wait" in raised.value.traceback  # where the hung tool is stuck


def test_calls_past_the_per_turn_limit_are_not_run():
    executor = ToolExecutor(max_calls_per_turn=2)
    (results,) = executor.run([(toolbox(), [ToolCall("add", {"a": i, "b": 0}) for i in range(4)])])
    assert [r.outcome for r in results] == ["ok", "ok", "over_limit", "over_limit"]
    assert [r.content for r in results[:2]] == ["0", "1"]


def test_a_rows_calls_run_in_order_and_rows_run_concurrently():
    order, lock = [], threading.Lock()
    both_running = threading.Barrier(2, timeout=5)

    def log(tag: str, wait: bool) -> str:
        """Log.

        Args:
            tag: The tag.
            wait: Whether to wait for the other row.
        """
        if wait:
            both_running.wait()  # only returns once the other row's call runs at the same time
        with lock:
            order.append(tag)
        return tag

    box = lambda: Toolbox.of({"log": log}, [tool_schema(log, "test")])  # noqa: E731
    rows = [(box(), [ToolCall("log", {"tag": f"{r}{i}", "wait": i == 0}) for i in range(3)]) for r in "ab"]
    results = ToolExecutor(max_workers=2).run(rows)
    assert [[x.content for x in row] for row in results] == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]
    assert [t for t in order if t[0] == "a"] == ["a0", "a1", "a2"]


def test_counts_sort_outcomes_into_the_models_faults_and_failed_runs():
    box = toolbox()
    calls = parse_hermes('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
                         '<tool_call>{"name": "nope"}</tool_call><tool_call>oops</tool_call>'
                         '<tool_call>{"name": "divide", "arguments": {"a": 1, "b": 0}}</tool_call>').calls
    (results,) = ToolExecutor().run([(box, calls)])
    counts = count_outcomes(results)
    assert (counts["calls"], counts["ok"], counts["invalid"], counts["failed"]) == (4, 1, 2, 1)


def test_episode_counts_and_conversation_after_a_turn():
    environments = load_environments("tests.helpers.trl_style_env:NumberGuessEnv")
    (episode,) = start_episodes(environments, [{"secret": 4, "prompt": [{"role": "user", "content": "go"}]}])
    turn = parse_hermes('<tool_call>{"name": "guess", "arguments": {"number": 4}}</tool_call>'
                        '<tool_call>{"name": "guess", "arguments": {"number": "four"}}</tool_call>')
    (results,) = ToolExecutor().run([(episode.toolbox, turn.calls)])
    new = episode.record_turn(turn, results)
    assert [m["content"] for m in new] == ["correct", "Error: argument 'number' of guess must be integer, "
                                                      "got string 'four'"]
    assert episode.messages[-3]["role"] == "assistant" and len(episode.messages[-3]["tool_calls"]) == 2
    assert (episode.counts["turns"], episode.counts["calls"], episode.counts["invalid"]) == (1, 2, 1)
    assert episode.reward() == 1.0


@pytest.mark.parametrize("key, value", [("max_workers", 0), ("max_calls_per_turn", True), ("timeout_s", 0)])
def test_executor_settings_are_checked(key, value):
    with pytest.raises(ValueError, match=key):
        ToolExecutor(**{key: value})


def test_check_arguments_accepts_what_the_schema_allows():
    parameters = tool_schema(scale, "test")["function"]["parameters"]
    assert check_arguments("scale", parameters, {"values": [1, 2.0], "factor": 3, "mode": "down"}) is None
