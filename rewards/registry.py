"""Name -> reward function registry.

A reward is a plain function with TRL's signature

    fn(completions: list[str], <column>, ..., *, <option>=default, ..., **columns)
        -> list[float | None]

Registered rewards also take what TRL's GRPOTrainer passes them: `completions` as strings, or as
conversational message lists (with a chat dataset), of which the last assistant message's
content is scored; and TRL's own keyword arguments (`prompts`, `completion_ids`,
`trainer_state`, ...), which `**columns` takes and the reward ignores. A completion of any other
form is a TypeError naming its row and the accepted forms.

- positional-or-keyword parameters after `completions` are the dataset columns it
  reads (one value per row, e.g. `answer`);
- keyword-only parameters with defaults are its *options*, bound once by
  `get(name, **options)` (e.g. `partial_credit=0.2`);
- `**columns` swallows every other column the trainer passes (`prompts=`, ...).

`None` in the output means "not applicable to this row": the trainer skips it
instead of counting it as 0.
"""

import functools
import inspect
from collections.abc import Callable

RewardFn = Callable[..., list]


class RewardInfrastructureError(RuntimeError):
    """A reward could not score because its machinery failed (not because of the completion): the
    trainer stops on it instead of training on scores that mean nothing."""

_REWARDS: dict[str, RewardFn] = {}
_OPTION_CHECKS: dict[str, Callable[..., None]] = {}


def option_names(fn: RewardFn) -> list[str]:
    """The options of `fn`: its keyword-only parameters that have a default."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty]


def register(name: str, check_options: Callable[..., None] | None = None):
    """Decorator: make `fn` available as `rewards.get(name)`.

    `check_options(**options)` (optional) validates option values when `get` binds
    them, so a bad recipe value fails at start-up rather than mid-training.
    """

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REWARDS:
            raise ValueError(f"reward {name!r} is already registered (by {_REWARDS[name].__module__})")
        params = list(inspect.signature(fn).parameters.values())
        if not params or params[0].name != "completions":
            raise TypeError(
                f"reward {name!r}: first parameter must be `completions`, got {fn.__name__}{inspect.signature(fn)}"
            )
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            raise TypeError(f"reward {name!r}: must accept **columns so unused dataset columns can be passed")

        @functools.wraps(fn)
        def reward(completions, *args, **columns):
            return fn(completion_texts(completions, name), *args, **columns)

        _REWARDS[name] = reward
        if check_options is not None:
            _OPTION_CHECKS[name] = check_options
        return reward

    return decorator


def completion_texts(completions, name: str = "reward") -> list[str]:
    """The text each completion holds: a string as it is, or the content of the last assistant
    message of a conversational completion (a list of {"role", "content"} messages, as TRL passes
    them with a chat dataset)."""
    if not isinstance(completions, (list, tuple)):
        raise TypeError(f"{name}: completions must be a list, got {type(completions).__name__}")
    texts = []
    for row, completion in enumerate(completions):
        if isinstance(completion, str):
            texts.append(completion)
            continue
        content = None
        if isinstance(completion, (list, tuple)):
            assistant = [m for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]
            message = assistant[-1] if assistant else (completion[-1] if completion else None)
            content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise TypeError(
                f"{name}: completion {row} is {completion!r:.120}; a completion is a string or a list of "
                f"messages whose last assistant message has string content, e.g. "
                f"[{{'role': 'assistant', 'content': '...'}}]"
            )
        texts.append(content)
    return texts


def names() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(_REWARDS)


class UnknownRewardError(KeyError, ValueError):
    """An unregistered reward name (a KeyError for lookups, a ValueError for configs)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def get(name: str, **options) -> RewardFn:
    """The reward registered as `name`, with `options` bound.

    The returned callable keeps the reward's signature for columns and is named
    `name` (TRL and our trainer log each reward under its function's `__name__`).
    """
    if name not in _REWARDS:
        raise UnknownRewardError(f"unknown reward {name!r}; valid names: {', '.join(names())}")
    fn = _REWARDS[name]
    valid = option_names(fn)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"reward {name!r} got unknown option(s) {unknown}; valid options: {valid or 'none'}")
    if name in _OPTION_CHECKS:
        _OPTION_CHECKS[name](**options)

    @functools.wraps(fn)
    def bound(completions, *args, **columns):
        return fn(completions, *args, **columns, **options)

    bound.__name__ = name
    return bound


def check_rows(name: str, completions: list, **columns) -> None:
    """Raise if a column does not have one value per completion (a trainer bug)."""
    for column, values in columns.items():
        if len(values) != len(completions):
            raise ValueError(
                f"reward {name!r}: column {column!r} has {len(values)} rows but there are "
                f"{len(completions)} completions; pass one value per completion (repeat each "
                f"row's value for every completion in its group)"
            )
