"""The arrows inside grpo/ point one way: a subpackage imports only from itself and the layers below it
(grpo/__init__.py lists them bottom up). Every import of every module counts, those inside functions too."""

import ast
from pathlib import Path

import pytest

GRPO = Path(__file__).resolve().parents[1] / "grpo"
LAYERS = ["algorithm", "research", "runtime", "speedups", "environments", "rollout", "objectives", "backends",
          "training"]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of each absolute import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "grpo":  # `from grpo import speedups`
                found += [(node.lineno, f"grpo.{alias.name}") for alias in node.names]
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "grpo" and len(parts) > 1 and parts[1] in LAYERS else None


def test_every_subpackage_is_in_the_layer_list():
    packages = sorted(p.name for p in GRPO.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(p for p in LAYERS if (GRPO / p).is_dir())


@pytest.mark.parametrize("package", [p for p in LAYERS if (GRPO / p).is_dir()])
def test_no_upward_import(package):
    rank = LAYERS.index(package)
    upward = []
    for path in sorted((GRPO / package).rglob("*.py")):
        for line, module in imported_modules(path):
            target = layer_of(module)
            if target is not None and LAYERS.index(target) > rank:
                upward.append(f"{path.relative_to(GRPO.parent)}:{line} imports {module} ({package} -> {target})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The test above can fail: an import inside a function is found and placed in its layer."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from grpo.training.step import train_step\n    from grpo import speedups\n")
    layers = [layer_of(m) for _, m in imported_modules(module)]
    assert [layer for layer in layers if layer] == ["training", "speedups"]
