"""The kit outside its checkout: a wheel, a fresh environment, a notebook that installs it."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
from conftest import build_wheel

ROOT = Path(__file__).parent.parent
KIT_LINE = 'KIT = "/content/lvlm-kit"'


def _setup_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    return nb.cells[params - 1].source


def test_every_notebook_has_the_same_setup_cell():
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    cells = {p.name: _setup_cell(p) for p in paths}
    assert len(set(cells.values())) == 1, "the setup cells differ"
    cell = cells[paths[0].name]
    assert KIT_LINE in cell and 'find_spec("lvlm_kit") is None' in cell
    assert '"-e"' not in cell  # an editable install would need a kernel restart


@pytest.mark.slow
@pytest.mark.kernels
def test_notebook_00_installs_the_kit_and_runs_outside_the_checkout(tmp_path):
    # The wheel, built from the checkout.
    wheel = build_wheel(tmp_path / "dist")
    # A fresh environment that sees the installed dependencies but not the kit.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("lvlm_kit", "lvlm-kit", "__editable__")):
            (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run(
        [python, "-c", where], capture_output=True, text=True, check=True
    ).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(str(deps) + "\n")
    probe = "import importlib.util; print(importlib.util.find_spec('lvlm_kit'))"
    assert (
        subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
        ).stdout.strip()
        == "None"
    )
    # Notebook 00 from a temporary folder, its setup cell pointed at the wheel.
    work = tmp_path / "work"
    work.mkdir()
    nb = (ROOT / "notebooks" / "00_quickstart.ipynb").read_text()
    assert KIT_LINE.replace('"', '\\"') in nb
    nb = nb.replace(KIT_LINE.replace('"', '\\"'), f'KIT = \\"{wheel}\\"')
    (work / "00.ipynb").write_text(nb)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    subprocess.run(
        [
            python,
            "-m",
            "papermill",
            "00.ipynb",
            "out.ipynb",
            "-p",
            "MAX_NEW_TOKENS",
            "8",
            "--kernel",
            "python3",
            "--execution-timeout",
            "240",
        ],
        check=True,
        cwd=work,
        env=env,
        capture_output=True,
        timeout=500,
    )
    # Installed into the fresh environment, testbed weights included; outputs in ./outputs.
    assert list(Path(purelib).glob("lvlm_kit-*.dist-info"))
    assert (Path(purelib) / "lvlm_kit/testbed/weights/lvlm/model.safetensors").is_file()
    metrics = json.loads((work / "outputs/00_quickstart/metrics.json").read_text())
    assert metrics and (work / "out.ipynb").is_file()
    assert not (Path(purelib).parent / "outputs").exists()
