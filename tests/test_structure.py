"""The package's shape: an import graph without cycles, one helper for layer outputs,
public names importable from ``lvlm_kit``."""

import ast
from pathlib import Path

import pytest
import torch

import lvlm_kit
from lvlm_kit.surgery import layer_output

PACKAGE = Path(lvlm_kit.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/")).with_suffix(".py").is_file()


def imports_of(path: Path) -> set[str]:
    """Every lvlm_kit module ``path`` imports: top level, inside functions, TYPE_CHECKING."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("lvlm_kit"):
                # `from . import data` names a module; `from .data import Item` names its module.
                names = {f"{target}.{a.name}" for a in node.names}
                found |= {n for n in names if is_module(n)} or {target}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lvlm_kit")}
    return found - {module_name(path)}


def test_import_graph_has_no_cycle():
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    # A package's __init__ re-exports; an import of a submodule does not go through it.
    graph = {m: {d for d in deps if d in graph and d != "lvlm_kit"} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep] if dep in path else [node, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "lvlm_kit.skipping" not in graph  # its parts live in surgery and stages
    assert graph["lvlm_kit.lens"] == {"lvlm_kit.anatomy"}


def test_layer_output_takes_a_tensor_or_a_tuple_and_nothing_else():
    h = torch.zeros(1, 2, 3)
    assert layer_output(h) is h and layer_output((h, None)) is h
    for bad in ({"hidden_states": h}, (None, h), (), [h]):
        with pytest.raises(TypeError, match="not the hidden-states tensor"):
            layer_output(bad)


def test_public_names_are_importable_from_the_package():
    for name in lvlm_kit.__all__:
        obj = getattr(lvlm_kit, name)
        if callable(obj):  # a function or class of the kit, not a re-export of a dependency
            assert obj.__module__.startswith("lvlm_kit."), name
        else:  # a constant of the kit (a table of names)
            assert isinstance(obj, (tuple, dict, frozenset)) and len(obj) > 0, name
    assert len(lvlm_kit.__all__) <= 10  # the entry points; everything else by module
    for name in ("load_model", "trace", "Trace", "Lens", "detect_stages", "skip_layers"):
        assert name in lvlm_kit.__all__


def test_every_module_is_reachable_by_name():
    import pkgutil
    import subprocess
    import sys

    found = sorted(m.name for m in pkgutil.iter_modules(lvlm_kit.__path__))
    assert found == sorted(lvlm_kit.MODULES)
    assert lvlm_kit.tracing.StepReducer.__module__ == "lvlm_kit.tracing"
    assert callable(lvlm_kit.trace) and lvlm_kit.trace is lvlm_kit.tracing.trace
    assert lvlm_kit.claims.REGISTRY[1].key == "near_zero_shallow"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lvlm_kit.nope  # noqa: B018
    # importing the package does not import the plotting, widget or testbed stacks
    code = (
        "import sys, lvlm_kit; "
        "print(sorted(m for m in ('matplotlib', 'ipywidgets', 'lvlm_kit.testbed', "
        "'lvlm_kit.plots') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readmes_library_snippet_runs(tmp_path, monkeypatch):
    import re

    from PIL import Image

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Library in five lines", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 48), (200, 120, 40)).save("cat.jpg")
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    tr = scope["tr"]
    assert tr.token_prob.shape == (tr.n_tokens, tr.n_layers + 1)
    assert tr.js.shape == (tr.n_tokens, tr.n_layers)
    assert lvlm_kit.Trace.load(tmp_path / "cat.safetensors").n_tokens == tr.n_tokens
