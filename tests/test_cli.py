import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from lvlm_kit import Trace
from lvlm_kit.cli import main
from lvlm_kit.data import dataset_items, export_amber

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def amber(tmp_path_factory):
    return export_amber(tmp_path_factory.mktemp("a") / "amber", n_images=6, seed=2)


def cli(*args):
    return [sys.executable, "-m", "lvlm_kit.cli", *map(str, args)]


def test_trace_resume_and_evaluate(saved_llava, amber, tmp_path, capsys):
    store = tmp_path / "store"
    args = ["trace", "--model", saved_llava, "--data", amber, "--out", store, "--max-new-tokens", 4]
    assert main(list(map(str, args))) == 0
    files = sorted(p.name for p in store.iterdir())
    assert files == [f"{i}.safetensors" for i in range(1, 7)] + ["store.json"]
    stamp = (store / "1.safetensors").stat().st_mtime_ns
    main(list(map(str, args)))  # everything done: nothing rewritten
    assert (store / "1.safetensors").stat().st_mtime_ns == stamp
    assert "wrote 0 traces; 6 already done" in capsys.readouterr().out
    tr = Trace.load(store / "3.safetensors")
    assert tr.meta["item_id"] == "3" and tr.prompt == "Describe this image." and tr.n_tokens == 4
    assert main(["evaluate", "--store", str(store), "--data", str(amber)]) == 0
    scores = json.loads((store / "scores_generative.json").read_text())
    assert scores["n_responses"] == 6 and scores["n_missing"] == 0
    # the random tiny model names no AMBER object: no noun counted, CHAIR undefined
    assert scores["n_nouns"] == 0 and scores["chair"] != scores["chair"]


@pytest.mark.slow
def test_kill_9_then_resume(saved_llava, amber, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / ".2.safetensors.abc123.tmp").write_bytes(b"half a file")  # a killed write
    args = cli(
        "trace", "--model", saved_llava, "--data", amber, "--out", store, "--max-new-tokens", 48
    )
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(store.glob("*.safetensors")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in store.glob("*.safetensors")}
    assert 1 <= len(done_before) < 6
    subprocess.run(args, env=ENV, check=True, capture_output=True, timeout=300)
    names = sorted(p.name for p in store.iterdir())  # no lock or temp file is left
    assert names == [f"{i}.safetensors" for i in range(1, 7)] + ["store.json"]
    for p in store.glob("*.safetensors"):
        assert Trace.load(p).n_tokens >= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_two_processes(saved_llava, amber, tmp_path):
    store = tmp_path / "store"
    args = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        "-m",
        "lvlm_kit.cli",
        "trace",
        "--model",
        str(saved_llava),
        "--data",
        str(amber),
        "--out",
        str(store),
        "--max-new-tokens",
        "3",
    ]
    log = tmp_path / "log.txt"
    # Workers are grandchildren: run in a session of their own and kill the whole group on
    # timeout (subprocess.run's timeout kills only the launcher and then waits on the pipes
    # the workers still hold). Gloo is pinned to loopback.
    with log.open("w") as fh:
        proc = subprocess.Popen(
            args,
            env={**ENV, "GLOO_SOCKET_IFNAME": "lo"},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("accelerate launch did not finish in 300 s:\n" + log.read_text()[-2000:])
    out = log.read_text()
    assert rc == 0, out[-2000:]
    assert "[0/2] wrote 3 traces" in out and "[1/2] wrote 3 traces" in out
    assert len(list(store.glob("*.safetensors"))) == 6


def test_image_folder_needs_a_prompt(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="needs a prompt: pass --prompt"):
        dataset_items(tmp_path)
    items = dataset_items(tmp_path, "Describe.")
    assert [(i.id, i.image.name) for i in items] == [("a.jpg", "a.jpg"), ("b.png", "b.png")]
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        dataset_items(tmp_path / "nope")


def test_reproduce_subcommand_names_an_unknown_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook named"):
        main(["reproduce", "--output", str(tmp_path), "--only", "99_nothing"])
    assert not any(tmp_path.iterdir())  # nothing written
