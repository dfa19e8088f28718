"""Environments and tools named in a recipe, found the way TRL's GRPOTrainer finds them.

TRL's convention (trl 1.16, `GRPOTrainer(environment_factory=..., tools=...)`), followed exactly so
a class runs unchanged in both trainers:
- an environment is an object whose class defines `reset(**row) -> str | None` and, optionally,
  `get_reward() -> float`; every other public function of its class (its name does not start with
  "_") is a tool, described to the model by its type hints and Google-style docstring;
- one instance per rollout row;
- several environments by name: a dict {name: factory}, and each row names its environment in its
  `environment` field, which is not passed on to `reset` (TRL: "each example must carry an
  `environment` field selecting its environment by name");
- stateless tools are plain functions, shared by every row.

A recipe names classes and functions as "package.module:Name" (importable from the working
directory). `load_environments` imports them, builds one probe instance of each environment (as
TRL does) so a broken class fails at start-up, and checks every tool's schema can be built.

Difference from TRL, on purpose: TRL keeps a pool of instances and calls `reset` again on an old
one for a later batch; here every episode gets a fresh instance from the factory, so no state can
leak between episodes. A class written for TRL (whose `reset` re-initialises everything) behaves
the same under both.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from transformers.utils import get_json_schema
from transformers.utils.chat_template_utils import DocstringParsingException, TypeHintParsingException

ENVIRONMENT_FIELD = "environment"  # TRL's per-row environment selector
RESERVED_METHODS = ("reset", "get_reward")


class EnvironmentFailure(RuntimeError):
    """The environment itself broke (its factory or `reset` raised), not the model's call.

    `traceback` is the environment's own traceback text; `environment` its name (None when there is one
    environment); `row` the index of the row it broke on."""

    def __init__(self, message: str, *, traceback: str, environment: str | None, row: int | None):
        super().__init__(f"{message}\n--- environment traceback ---\n{traceback}")
        self.message = message
        self.traceback = traceback
        self.environment = environment
        self.row = row


def load_object(spec: str, what: str, key: str):
    """The object named by "package.module:Name"; `what` and `key` name it in errors (e.g. "an environment
    class", "env.factory")."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(
            f"{key}={spec!r} must name {what} as 'package.module:Name' (a module importable from the working "
            f"directory, a colon, then the name in it), e.g. 'grpo.environments.ecom:ProductDiscoveryEnv'"
        )
    module_name, name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{key}={spec!r}: module {module_name!r} cannot be imported ({error}); run from the directory that "
            f"holds it or install its package"
        ) from error
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ValueError(f"{key}={spec!r}: module {module_name!r} has no {name!r}; it defines: {', '.join(public)}")
    return getattr(module, name)


def tool_methods(environment) -> dict[str, Callable]:
    """The tools of `environment`: its class's public functions except `reset` and `get_reward`, bound to
    it, by name (what TRL lists with `inspect.getmembers(type(env), inspect.isfunction)`: properties and
    instance attributes are not tools)."""
    return {
        name: getattr(environment, name)
        for name, _ in inspect.getmembers(type(environment), predicate=inspect.isfunction)
        if name not in RESERVED_METHODS and not name.startswith("_")
    }


def tool_schema(tool: Callable, owner: str) -> dict:
    """The JSON schema `apply_chat_template(tools=[tool])` renders for `tool` (transformers' own
    `get_json_schema`, the function TRL relies on): {"type": "function", "function": {"name", "description",
    "parameters", ...}}. `owner` names the class or recipe key in the error."""
    try:
        return get_json_schema(tool)
    except (DocstringParsingException, TypeHintParsingException) as error:
        raise ValueError(
            f"tool {owner}.{tool.__name__} cannot be described to the model: {error}. A tool needs a type hint on "
            f"every argument and a Google-style docstring with an 'Args:' line for each"
        ) from error


@dataclass(frozen=True)
class Environments:
    """What a recipe's `env` section names, loaded and checked.

    factories: {name: zero-argument callable returning a new environment}; the single-environment case
        is the one name None (rows carry no `environment` field).
    tools: the stateless tools, by name, shared by every row.
    schemas: {environment name: the tool schemas of that environment's rows} (the stateless tools, then
        its methods by name, TRL's order), ready for `apply_chat_template(tools=...)`.
    """

    factories: Mapping[str | None, Callable[[], object]]
    tools: Mapping[str, Callable]
    schemas: Mapping[str | None, tuple[dict, ...]]

    def environment_of(self, row: Mapping, index: int) -> str | None:
        """The environment name row `index` selects (None with a single environment)."""
        if list(self.factories) in ([None], []):  # one environment, or stateless tools only
            return None
        name = row.get(ENVIRONMENT_FIELD)
        if name not in self.factories:
            raise ValueError(
                f"row {index} has {ENVIRONMENT_FIELD}={name!r}, which is not one of the environments "
                f"{sorted(self.factories)}; give each row an '{ENVIRONMENT_FIELD}' field naming one of them"
            )
        return name


def _factory(spec, key: str) -> Callable[[], object]:
    factory = load_object(spec, "an environment class or factory", key) if isinstance(spec, str) else spec
    if not callable(factory):
        raise ValueError(f"{key}={spec!r} is not callable; name a class or a zero-argument function")
    return factory


def _probe(factory: Callable[[], object], key: str) -> object:
    """One instance, as TRL builds at start-up: a factory that cannot build or a class without `reset`
    fails here rather than on the first batch."""
    try:
        instance = factory()
    except Exception as error:  # noqa: BLE001  (any failure of user code is reported with its traceback)
        raise EnvironmentFailure(f"{key}: the environment factory raised {error!r}", traceback=traceback.format_exc(),
                                 environment=key, row=None) from error
    if not callable(getattr(type(instance), "reset", None)):
        raise ValueError(f"{key}: {type(instance).__name__} has no reset method; an environment class defines "
                         f"reset(self, **row) -> str | None")
    return instance


def load_environments(
    factory: str | Callable | Mapping[str, str | Callable] | None = None,
    tools: Sequence[str | Callable] = (),
) -> Environments:
    """Import and check what a recipe names.

    factory: "package.module:Class" (or a callable) for one environment, a {name: spec} dict for several
        (rows select one by their `environment` field), or None for stateless tools only.
    tools: "package.module:function" specs (or callables) for stateless tools.
    """
    if factory is None and not tools:
        raise ValueError("env needs a factory (env.factory) or stateless tools (env.tools); neither was given")
    loaded_tools = {}
    for index, spec in enumerate(tools):
        tool = load_object(spec, "a tool function", f"env.tools[{index}]") if isinstance(spec, str) else spec
        if not inspect.isfunction(tool):
            raise ValueError(f"env.tools[{index}]={spec!r} is not a plain function")
        if tool.__name__ in loaded_tools:
            raise ValueError(f"env.tools names two tools called {tool.__name__!r}; tool names must be unique")
        loaded_tools[tool.__name__] = tool
    tool_schemas = tuple(tool_schema(tool, "env.tools") for tool in loaded_tools.values())

    if factory is None:
        specs = {}
    elif isinstance(factory, Mapping):
        if not factory or not all(isinstance(name, str) and name for name in factory):
            raise ValueError(f"env.factory={dict(factory)!r}: several environments are a non-empty "
                             f"{{name: 'package.module:Class'}} mapping with string names")
        specs = {name: (spec, f"env.factory.{name}") for name, spec in factory.items()}
    else:
        specs = {None: (factory, "env.factory")}

    factories, schemas = {}, {}
    for name, (spec, key) in specs.items():
        made = _factory(spec, key)
        methods = tool_methods(_probe(made, key))
        clash = sorted(set(methods) & set(loaded_tools))
        if clash:
            raise ValueError(f"{key}: method(s) {clash} have the name of a stateless tool in env.tools; rename one")
        owner = f"{key} ({getattr(made, '__name__', type(made).__name__)})"
        factories[name] = made
        schemas[name] = tool_schemas + tuple(tool_schema(method, owner) for method in methods.values())
    if not specs:
        schemas[None] = tool_schemas
    return Environments(factories=factories, tools=loaded_tools, schemas=schemas)
