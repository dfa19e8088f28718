"""Loading environments and tools the way TRL's GRPOTrainer does, and starting one episode per row."""

import ast
import inspect
from pathlib import Path

import pytest

from grpo.environments import (
    CHATML_TOOL_TEMPLATE, EnvironmentFailure, initial_messages, load_environments, load_object, raise_if_all_failed,
    start_episodes, tool_methods,
)
from tests.helpers.trl_style_env import NumberGuessEnv, add
from tests.tiny_model import byte_level_tokenizer

HELPER = "tests.helpers.trl_style_env"


class Broken:
    """An environment whose factory raises (module-level so a recipe string can name it)."""

    def __init__(self):
        raise RuntimeError("database unreachable")


class ResetRaises:
    def reset(self, **row):
        raise KeyError("missing column 'secret'")

    def poke(self) -> str:
        """Poke.

        Returns:
            Nothing useful.
        """
        return "ok"


class NoReset:
    def poke(self) -> str:
        """Poke."""
        return "ok"


class NoDocstring:
    def reset(self, **row):
        return None

    def poke(self, x: int) -> str:
        return str(x)


class ClashesWithAdd:
    def reset(self, **row):
        return None

    def add(self, a: int, b: int) -> int:
        """Add.

        Args:
            a: A.
            b: B.
        """
        return a + b


def trl_tool_names(instance) -> list[str]:
    """TRL 1.16's rule, as written in GRPOTrainer.__init__ (the ground truth we follow)."""
    return [name for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]


@pytest.mark.parametrize("spec, message", [
    pytest.param("no_colon", "must name an environment class", id="no-colon"),
    pytest.param("a:b:c", "must name an environment class", id="two-colons"),
    pytest.param(":Name", "must name an environment class", id="no-module"),
    pytest.param("no_such_module_xyz:Env", "cannot be imported", id="missing-module"),
    pytest.param(f"{HELPER}:Nope", "has no 'Nope'.*NumberGuessEnv", id="missing-name"),
])
def test_bad_recipe_strings_name_the_key_and_the_fix(spec, message):
    with pytest.raises(ValueError, match=message) as raised:
        load_object(spec, "an environment class", "env.factory")
    assert "env.factory" in str(raised.value)


def test_tools_are_the_public_methods_trl_would_expose():
    env = NumberGuessEnv()
    assert sorted(tool_methods(env)) == trl_tool_names(env) == ["guess"]


def test_schemas_render_in_the_chat_template_exactly_as_the_methods_trl_passes():
    environments = load_environments(f"{HELPER}:NumberGuessEnv", tools=[f"{HELPER}:add"])
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = CHATML_TOOL_TEMPLATE
    env = NumberGuessEnv()
    messages = [{"role": "user", "content": "go"}]
    # TRL passes the bound methods (standalone tools first); apply_chat_template turns them into schemas.
    from_methods = tokenizer.apply_chat_template(messages, tools=[add, env.guess], tokenize=False)
    from_schemas = tokenizer.apply_chat_template(messages, tools=list(environments.schemas[None]), tokenize=False)
    assert from_methods == from_schemas
    assert [s["function"]["name"] for s in environments.schemas[None]] == ["add", "guess"]


def test_several_environments_are_selected_per_row_by_the_environment_field():
    environments = load_environments({"guess": f"{HELPER}:NumberGuessEnv", "other": NumberGuessEnv})
    rows = [{"environment": "guess", "secret": 3, "prompt": [{"role": "user", "content": "play"}]},
            {"environment": "other", "secret": 9}]
    first, second = start_episodes(environments, rows)
    assert (first.environment_name, second.environment_name) == ("guess", "other")
    assert first.environment.secret == 3 and second.environment.secret == 9
    assert first.messages == [{"role": "user", "content": "play\nI picked a whole number between 1 and 20. "
                                                          "Find it with the guess tool."}]
    # a row without a prompt starts from an empty user message, as in TRL
    assert second.messages[0]["content"].startswith("\nI picked")
    with pytest.raises(ValueError, match="row 0 has environment='chess'.*'guess', 'other'"):
        start_episodes(environments, [{"environment": "chess"}])
    with pytest.raises(ValueError, match="row 0 has environment=None"):
        start_episodes(environments, [{"secret": 1}])


def test_each_row_gets_a_fresh_instance():
    environments = load_environments(NumberGuessEnv)
    a, b = start_episodes(environments, [{"secret": 1}, {"secret": 1}])
    assert a.environment is not b.environment
    a.toolbox.tools["guess"](number=1)
    assert a.environment.solved and not b.environment.solved


@pytest.mark.parametrize("factory, tools, message", [
    pytest.param(None, (), "neither was given", id="nothing"),
    pytest.param(NoReset, (), "has no reset method", id="no-reset"),
    pytest.param(NoDocstring, (), "tool env.factory \\(NoDocstring\\).poke cannot be described", id="no-docstring"),
    pytest.param(ClashesWithAdd, (f"{HELPER}:add",), "have the name of a stateless tool", id="name-clash"),
    pytest.param(None, (f"{HELPER}:add", add), "two tools called 'add'", id="duplicate-tool"),
    pytest.param(None, (f"{HELPER}:NumberGuessEnv",), "is not a plain function", id="class-as-tool"),
    pytest.param({}, (), "non-empty", id="empty-mapping"),
])
def test_bad_environments_fail_at_load_with_the_fix(factory, tools, message):
    with pytest.raises(ValueError, match=message):
        load_environments(factory, tools)


def test_a_factory_that_raises_fails_at_load_with_its_traceback():
    with pytest.raises(EnvironmentFailure) as raised:
        load_environments("tests.test_env_loading:Broken")
    assert "database unreachable" in raised.value.traceback and "__init__" in raised.value.traceback


def test_reset_raising_is_an_environment_failure_per_row_and_all_rows_failing_is_raised():
    environments = load_environments(ResetRaises)
    episodes = start_episodes(environments, [{"prompt": [{"role": "user", "content": "x"}]}] * 3)
    assert all(isinstance(e, EnvironmentFailure) for e in episodes)
    assert episodes[1].row == 1 and "missing column 'secret'" in episodes[1].traceback
    assert "in reset" in episodes[1].traceback
    with pytest.raises(EnvironmentFailure, match="all 3 rows failed to start; the first: environment None: reset"):
        raise_if_all_failed(episodes)


def test_a_factory_that_breaks_after_the_probe_fails_its_rows():
    made = []

    def factory():
        if made:
            raise OSError("out of file handles")
        made.append(1)
        return NumberGuessEnv()

    (failure,) = start_episodes(load_environments(factory), [{"secret": 1}])
    assert isinstance(failure, EnvironmentFailure) and "the factory raised OSError" in failure.message
    assert "out of file handles" in failure.traceback


def test_some_rows_failing_is_left_to_the_caller():
    class SometimesRaises(NumberGuessEnv):
        def reset(self, **row):
            if row["secret"] < 0:
                raise ValueError("negative secret")
            return super().reset(**row)

    episodes = start_episodes(load_environments(SometimesRaises), [{"secret": 1}, {"secret": -1}])
    assert not isinstance(episodes[0], EnvironmentFailure) and isinstance(episodes[1], EnvironmentFailure)
    raise_if_all_failed(episodes)  # not all: no error


@pytest.mark.parametrize("prompt, message", [
    pytest.param("rendered text", "must be a list of chat messages", id="string"),
    pytest.param([], "must be a list of chat messages", id="empty"),
    pytest.param([{"content": "no role"}], "must be a list of chat messages", id="no-role"),
])
def test_prompts_must_be_chat_messages(prompt, message):
    with pytest.raises(ValueError, match=f"row 4: .*{message}"):
        initial_messages(prompt, None, 4)


def test_reset_returning_something_else_than_text_is_an_error():
    with pytest.raises(ValueError, match="reset returned 5"):
        initial_messages([{"role": "user", "content": "x"}], 5, 0)


def test_stateless_tools_alone():
    environments = load_environments(None, [f"{HELPER}:add"])
    (episode,) = start_episodes(environments, [{"prompt": [{"role": "user", "content": "2+3?"}]}])
    assert episode.environment is None and episode.reward() is None and episode.success() is None
    assert episode.toolbox.tools["add"](a=2, b=3) == 5


def test_the_package_never_imports_the_training_code():
    forbidden = ("grpo.training", "grpo.rollout", "train")
    for path in Path("grpo/environments").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path} imports {name}"
