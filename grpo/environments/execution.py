"""Running the model's tool calls: checked, in threads, each under a time limit.

Bad input from the model is data: a call that cannot be read, names no tool, has missing, extra or
mistyped arguments, raises, or outlives its time limit becomes a `ToolResult` whose `content` is an
error message the model reads as the tool's result, and whose `outcome` is counted. Nothing a call
does stops the rollout.

Threads: the calls of one row run in the order the model wrote them (a later call may depend on an
earlier one, and one environment instance is touched by one call at a time); rows run concurrently,
at most `max_workers` calls at once. A call that outlives `timeout_s` cannot be killed (Python has
no thread kill): its daemon thread is abandoned, still running, and
- the row's later calls in that turn are skipped (`outcome` "skipped"), and the row's calls in later
  turns are refused while the abandoned call still runs (`outcome` "busy"), so no two calls ever touch
  one environment at once;
- whatever the abandoned call does to its environment when it finishes is not undone;
- more than `max_abandoned` calls still running at once is an EnvironmentFailure: tools that hang
  that often are a bug in the environment, not the model's doing.
Daemon threads, so a hung tool cannot keep the process from exiting.

Stateless tools (`env.tools`) are shared by every row and so are called from several threads at once:
they must be thread-safe.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from grpo.environments.loading import EnvironmentFailure
from grpo.environments.tool_calls import ToolCall

OK = "ok"
# outcome -> whose fault: the model's call was bad before anything ran, or the run went wrong.
INVALID_OUTCOMES = ("malformed", "unknown_tool", "bad_arguments", "over_limit")
FAILED_OUTCOMES = ("raised", "timeout", "skipped", "busy")
OUTCOMES = (OK, *INVALID_OUTCOMES, *FAILED_OUTCOMES)


@dataclass(frozen=True)
class ToolResult:
    """What one call gave back. `content` is what the model reads; `outcome` one of OUTCOMES."""

    name: str
    content: str
    outcome: str
    seconds: float = 0.0

    def message(self) -> dict:
        """The tool message the chat template renders."""
        return {"role": "tool", "name": self.name, "content": self.content}


@dataclass
class Toolbox:
    """The tools one row may call: {name: callable} and {name: JSON-schema "parameters"} (from
    `tool_schema`). One per episode: the executor keys its abandoned calls on it."""

    tools: Mapping[str, Callable]
    parameters: Mapping[str, dict]
    _abandoned: list[threading.Thread] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, tools: Mapping[str, Callable], schemas: Sequence[dict]) -> Toolbox:
        parameters = {s["function"]["name"]: s["function"].get("parameters", {}) for s in schemas}
        missing = sorted(set(tools) ^ set(parameters))
        if missing:
            raise ValueError(f"tools and schemas name different tools: {missing}")
        return cls(dict(tools), parameters)

    def busy(self) -> bool:
        """Whether a call that ran out of time is still running on these tools."""
        self._abandoned[:] = [t for t in self._abandoned if t.is_alive()]
        return bool(self._abandoned)

    def abandon(self, thread: threading.Thread) -> None:
        self._abandoned.append(thread)


def count_outcomes(results: Sequence[ToolResult]) -> Counter:
    """{outcome: count}, plus "calls" (all), "invalid" (the model's bad calls) and "failed" (runs that went
    wrong), for logging per episode."""
    counts = Counter(r.outcome for r in results)
    counts["calls"] = len(results)
    counts["invalid"] = sum(counts[o] for o in INVALID_OUTCOMES)
    counts["failed"] = sum(counts[o] for o in FAILED_OUTCOMES)
    return counts


_JSON_TYPES = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}


def _type_error(schema: dict, value, where: str) -> str | None:
    """Why `value` does not fit the JSON schema `schema` (the subset `get_json_schema` writes), or None."""
    if "anyOf" in schema:
        if any(_type_error(option, value, where) is None for option in schema["anyOf"]):
            return None
        return f"{where} does not match any allowed form"
    if value is None and schema.get("nullable"):
        return None
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        fits = any(isinstance(value, _JSON_TYPES[n]) and not (n in ("integer", "number") and isinstance(value, bool))
                   for n in names if n in _JSON_TYPES)
        if not fits:
            return f"{where} must be {' or '.join(names)}, got {_json_type(value)} {value!r:.40}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} must be one of {schema['enum']}, got {value!r:.40}"
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problem = _type_error(schema["items"], item, f"{where}[{index}]")
            if problem:
                return problem
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            problem = _type_error(schema["additionalProperties"], item, f"{where}[{key!r}]")
            if problem:
                return problem
    return None


def _json_type(value) -> str:
    for name, kinds in _JSON_TYPES.items():
        if isinstance(value, kinds) and not (name in ("integer", "number") and isinstance(value, bool)):
            return name
    return type(value).__name__


def check_arguments(name: str, parameters: dict, arguments: dict) -> str | None:
    """Why `arguments` cannot be passed to tool `name` whose JSON-schema parameters are `parameters`
    (missing required, unknown, or wrongly typed arguments), or None when they can."""
    properties = parameters.get("properties", {})
    missing = [p for p in parameters.get("required", []) if p not in arguments]
    if missing:
        return f"{name} is missing required argument(s) {missing}; its arguments are {sorted(properties)}"
    unknown = sorted(set(arguments) - set(properties))
    if unknown:
        return f"{name} has no argument(s) {unknown}; its arguments are {sorted(properties) or 'none'}"
    for key, value in arguments.items():
        problem = _type_error(properties[key], value, f"argument {key!r} of {name}")
        if problem:
            return problem
    return None


def _invoke(tool: Callable, arguments: dict):
    if inspect.iscoroutinefunction(tool):
        return asyncio.run(tool(**arguments))
    return tool(**arguments)


def _run_call(done: queue.Queue, row: int, index: int, name: str, tool: Callable, arguments: dict) -> None:
    """One call, in its own thread: puts (row, index, (outcome, content), seconds) on `done`."""
    began = time.perf_counter()
    try:
        value = _invoke(tool, arguments)
        outcome = (OK, value if isinstance(value, str) else str(value))
    except Exception as error:  # noqa: BLE001  (a tool's own failure is reported to the model)
        last = traceback.extract_tb(error.__traceback__)[-1]
        outcome = ("raised", f"Error: {name} raised {type(error).__name__}: {error} (at {last.name}, line {last.lineno})")
    done.put((row, index, outcome, time.perf_counter() - began))


def _checked(toolbox: Toolbox, call: ToolCall) -> ToolResult | None:
    """The result of a call that must not run (with the reason), or None for a call that may."""
    if call.error is not None:
        return ToolResult(call.name or "unknown", f"Error: {call.error}", "malformed")
    if call.name not in toolbox.tools:
        return ToolResult(call.name, f"Error: there is no tool {call.name!r}; the tools are "
                                     f"{', '.join(sorted(toolbox.tools)) or 'none'}", "unknown_tool")
    problem = check_arguments(call.name, toolbox.parameters[call.name], call.arguments)
    if problem:
        return ToolResult(call.name, f"Error: {problem}", "bad_arguments")
    return None


class ToolExecutor:
    """Runs each row's calls (see the module docstring for the threading rules).

    max_workers: calls running at once, over all rows. timeout_s: the time limit of one call, from its
    start. max_calls_per_turn: calls past this many in one turn are answered "over_limit" unread, so a
    turn of a thousand calls costs nothing. max_abandoned: timed-out calls allowed to still run."""

    def __init__(self, max_workers: int = 8, timeout_s: float = 10.0, max_calls_per_turn: int = 8,
                 max_abandoned: int = 32):
        for key, value in (("max_workers", max_workers), ("max_calls_per_turn", max_calls_per_turn),
                           ("max_abandoned", max_abandoned)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r} must be a positive integer")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be positive (seconds)")
        self.max_workers = max_workers
        self.timeout_s = timeout_s
        self.max_calls_per_turn = max_calls_per_turn
        self.max_abandoned = max_abandoned
        self._abandoned: list[threading.Thread] = []

    def run(self, jobs: Sequence[tuple[Toolbox, Sequence[ToolCall]]]) -> list[list[ToolResult]]:
        """One result per call, per row, in the order the calls were written."""
        results: list[list[ToolResult | None]] = [[None] * len(calls) for _, calls in jobs]
        to_run: list[list[int]] = []  # per row: indices of the calls that still have to run, in order
        for row, (toolbox, calls) in enumerate(jobs):
            runnable = []
            for index, call in enumerate(calls):
                if index >= self.max_calls_per_turn:
                    results[row][index] = ToolResult(call.name or "unknown", f"Error: only {self.max_calls_per_turn} "
                                                     f"tool calls are run per turn; this one was not", "over_limit")
                elif toolbox.busy():
                    results[row][index] = ToolResult(call.name or "unknown", "Error: the environment is still busy "
                                                     "with an earlier call that ran out of time", "busy")
                else:
                    results[row][index] = _checked(toolbox, call)
                    if results[row][index] is None:
                        runnable.append(index)
            to_run.append(runnable)
        self._run_in_threads(jobs, to_run, results)
        return [list(row) for row in results]

    def _run_in_threads(self, jobs, to_run: list[list[int]], results) -> None:
        done: queue.Queue = queue.Queue()
        waiting = [row for row in range(len(jobs)) if to_run[row]]
        running: dict[int, tuple[int, float, threading.Thread]] = {}  # row -> (call index, deadline, thread)

        def start(row: int) -> None:
            toolbox, calls = jobs[row]
            index = to_run[row].pop(0)
            call = calls[index]

            thread = threading.Thread(target=_run_call, args=(done, row, index, call.name, toolbox.tools[call.name],
                                                              dict(call.arguments)), daemon=True, name=f"tool-{call.name}")
            running[row] = (index, time.monotonic() + self.timeout_s, thread)
            thread.start()

        while waiting or running:
            while waiting and len(running) < self.max_workers:
                start(waiting.pop(0))
            wait = max(0.0, min(deadline for _, deadline, _ in running.values()) - time.monotonic())
            try:
                row, index, (outcome, content), seconds = done.get(timeout=wait)
            except queue.Empty:
                self._expire(jobs, to_run, results, running, waiting)
                continue
            if running.get(row, (None,))[0] != index:
                continue  # a call already given up on finished late: its result is not the model's any more
            results[row][index] = ToolResult(jobs[row][1][index].name, content, outcome, seconds)
            del running[row]
            if to_run[row]:
                waiting.append(row)

    def _expire(self, jobs, to_run, results, running, waiting) -> None:
        now = time.monotonic()
        for row, (index, deadline, thread) in list(running.items()):
            if deadline > now:
                continue
            toolbox, calls = jobs[row]
            results[row][index] = ToolResult(calls[index].name, f"Error: {calls[index].name} did not finish within "
                                             f"its time limit of {self.timeout_s:g} s", "timeout", self.timeout_s)
            for later in to_run[row]:
                results[row][later] = ToolResult(calls[later].name, "Error: not run, since an earlier call in this "
                                                 "turn ran out of time", "skipped")
            to_run[row].clear()
            toolbox.abandon(thread)
            self._abandoned.append(thread)
            del running[row]
        self._abandoned[:] = [t for t in self._abandoned if t.is_alive()]
        if len(self._abandoned) > self.max_abandoned:
            raise EnvironmentFailure(
                f"{len(self._abandoned)} tool calls are still running past their time limit of {self.timeout_s:g} s "
                f"(more than max_abandoned={self.max_abandoned}): the tools hang",
                traceback=_stack_of(self._abandoned[-1]),
                environment=None, row=None,
            )


def _stack_of(thread: threading.Thread) -> str:
    """Where a running thread is now: the traceback of a hung tool."""
    frame = sys._current_frames().get(thread.ident)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(the thread has just finished)"
