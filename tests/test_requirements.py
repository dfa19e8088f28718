"""The SageMaker container's requirements come from pyproject.toml: same packages, pinned inside its
ranges, at the versions installed where the test suite runs."""

import tomllib
from importlib.metadata import version as installed_version
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def test_container_requirements_pin_every_pyproject_dependency_inside_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {r.name: r for r in map(Requirement, project["dependencies"]) if r.name != "torch"}
    lines = [line for line in (REPO / "requirements-sagemaker.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    pinned = {}
    for line in lines:
        requirement = Requirement(line)
        (spec,) = requirement.specifier  # exactly one specifier: the pin
        assert spec.operator == "==", f"{line}: pin it with == (scripts/sync_requirements.py)"
        pinned[requirement.name] = spec.version
    assert len(pinned) == len(lines), "a package is listed twice"
    assert set(pinned) == set(wanted), set(pinned) ^ set(wanted)
    for name, version in pinned.items():
        assert wanted[name].specifier.contains(version), f"{name}=={version} is outside pyproject's {wanted[name]}"


def test_pyproject_caps_the_libraries_whose_internals_the_project_uses():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    by_name = {r.name: r for r in map(Requirement, project["dependencies"])}
    for name in ("transformers", "peft", "bitsandbytes", "deepspeed"):
        assert any(spec.operator == "<" for spec in by_name[name].specifier), f"{name} has no upper bound"


def test_each_container_pin_is_the_version_the_suite_runs_with():
    """The container installs what was tested: a pin that differs from this environment's version
    (a package upgraded here, or the file edited by hand) fails until scripts/sync_requirements.py
    rewrites the file."""
    lines = [line for line in (REPO / "requirements-sagemaker.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    differ = {}
    for line in lines:
        requirement = Requirement(line)
        (pin,) = requirement.specifier
        if installed_version(requirement.name) != pin.version:
            differ[requirement.name] = (pin.version, installed_version(requirement.name))
    assert not differ, f"pinned vs installed: {differ}; run scripts/sync_requirements.py"
