"""The declared dependencies: pyproject.toml and environment.yml agree, and cover the imports."""

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> list[str]:
    project = _pyproject()
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    return [r for r in project["dependencies"] + extras if not r.startswith("lvlm-kit")]


def test_environment_yml_lists_what_pyproject_declares():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(r for r in pip if r != "-e .") == sorted(_declared())
    assert "-e ." in pip
    python = next(d for d in env["dependencies"] if str(d).startswith("python="))
    low = _pyproject()["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, low.split(".")))


def test_every_third_party_import_of_the_package_is_declared():
    names = {Requirement(r).name.lower() for r in _declared()}
    owners = packages_distributions()
    imported = set()
    for path in (ROOT / "lvlm_kit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"lvlm_kit", "__future__"}
    missing = {m: owners.get(m) for m in third_party
               if not {d.lower() for d in owners.get(m, [m])} & names}  # fmt: skip
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
