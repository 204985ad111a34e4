"""The declared dependencies: pyproject.toml, the locks and environment.yml agree, and cover
the imports."""

import ast
import re
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


def _pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a lock or requirements file."""
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", path.read_text(), re.M)
    return {name.lower(): version for name, version in found}


def test_the_lock_pins_every_declared_requirement_within_its_range():
    cpu = _pins(ROOT / "requirements" / "cpu.txt")
    gpu = _pins(ROOT / "requirements" / "gpu.txt")
    torch_pin = _pins(ROOT / "requirements" / "torch.txt")
    assert set(torch_pin) == {"torch"} and gpu["torch"] == torch_pin["torch"]
    assert "torch" not in cpu and not [n for n in cpu if n.startswith(("nvidia-", "triton"))]
    assert {n: v for n, v in gpu.items() if n in cpu} == cpu  # one resolution, two sets
    for line in (ROOT / "requirements" / "cpu.txt").read_text().splitlines():
        if "==" in line:  # every pin carries hashes (pip --require-hashes)
            assert line.rstrip().endswith("\\"), line
    for req in map(Requirement, _declared()):
        version = (cpu | torch_pin).get(req.name.lower())
        assert version is not None, f"{req.name} is declared but not locked"
        assert req.specifier.contains(version), f"{req.name}=={version} outside {req.specifier}"


def test_environment_yml_pins_the_locked_versions():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    pinned = dict(r.split("==") for r in pip if r != "-e .")
    locked = _pins(ROOT / "requirements" / "cpu.txt") | _pins(ROOT / "requirements" / "torch.txt")
    assert {n.lower(): v for n, v in pinned.items()} == locked
    python = next(d for d in env["dependencies"] if str(d).startswith("python="))
    low = _pyproject()["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, low.split(".")))


def test_the_environment_runs_the_locked_versions():
    from importlib.metadata import version

    locked = _pins(ROOT / "requirements" / "cpu.txt")
    for name in ("transformers", "accelerate", "bitsandbytes", "numpy", "tokenizers", "scipy"):
        assert version(name) == locked[name], f"{name}: installed != locked (run make env)"


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
    missing = {
        m: owners.get(m) for m in third_party if not {d.lower() for d in owners.get(m, [m])} & names
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
