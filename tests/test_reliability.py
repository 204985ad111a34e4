"""Bad, careless and hostile inputs: each gets one clear error naming the problem and the fix,
raised before expensive work, and nothing the user owns is lost or changed."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny_llava
from PIL import Image

from lvlm_kit import Trace, trace
from lvlm_kit import data as data_mod
from lvlm_kit import files as files_mod
from lvlm_kit.cli import main
from lvlm_kit.data import dataset_items, export_amber, read_amber, resolve_data, vqa_items
from lvlm_kit.generation import generate_texts
from lvlm_kit.inputs import load_image
from lvlm_kit.notebook import ParameterError, check_parameters
from lvlm_kit.reproduce import run_notebooks
from lvlm_kit.store import StoreError, evaluate_store, trace_dataset
from lvlm_kit.trace_file import TraceFileError

PROMPT = "Describe the image."


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path):
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text("four years of work")
    (path / "model").mkdir()
    (path / "model" / "weights.bin").write_bytes(b"\x00" * 64)
    return snapshot(path)


# ---- 2. nothing the user owns is deleted or overwritten ---------------------------------


def test_a_notebook_output_dir_never_loses_a_users_testbed_folder(tmp_path):
    before = user_folder(tmp_path / "testbed")  # OUTPUT_DIR=<tmp_path> names it
    with pytest.raises(FileExistsError, match="not written by export_amber.*never deletes it"):
        resolve_data("testbed", tmp_path, 2, seed=0)
    assert snapshot(tmp_path / "testbed") == before
    with pytest.raises(FileExistsError, match="never deletes it"):
        export_amber(tmp_path / "testbed", 2, overwrite=True)
    assert snapshot(tmp_path / "testbed") == before


def test_an_export_is_reused_and_replaced_only_when_its_settings_change(tmp_path):
    root = tmp_path / "testbed"
    resolve_data("testbed", tmp_path, 3, seed=0)
    stamp = (root / "data" / "annotations.json").stat().st_mtime_ns
    assert len(resolve_data("testbed", tmp_path, 3, seed=0)) == 3  # same settings: reused
    assert (root / "data" / "annotations.json").stat().st_mtime_ns == stamp
    assert len(resolve_data("testbed", tmp_path, 5, seed=0)) == 5  # other settings: our export
    assert data_mod.read_export_settings(root)["n_images"] == 5


def test_a_users_file_inside_a_kit_export_is_never_deleted(tmp_path):
    root = tmp_path / "testbed"
    resolve_data("testbed", tmp_path, 2, seed=0)
    (root / "my_analysis.txt").write_text("mine")
    before = snapshot(root)
    with pytest.raises(
        FileExistsError,
        match=r"1 file\(s\) export_amber did not write.*"
        r"my_analysis.txt.*never deletes them",
    ):
        resolve_data("testbed", tmp_path, 3, seed=0)  # other settings: would re-export
    assert snapshot(root) == before


@pytest.mark.parametrize("marker", ["{}", "[]", "0", '"x"', '{"n_images": 2}', "not json"])
def test_a_forged_export_marker_does_not_make_a_folder_the_kits(tmp_path, marker):
    root = tmp_path / "testbed"
    user_folder(root)
    (root / data_mod.EXPORT_MARKER).write_text(marker)
    before = snapshot(root)
    assert data_mod.read_export_settings(root) is None
    with pytest.raises(FileExistsError, match="not written by export_amber.*never deletes it"):
        resolve_data("testbed", tmp_path, 2, seed=0)
    assert snapshot(root) == before


def test_the_export_marker_lists_every_file_it_wrote(tmp_path):
    root = export_amber(tmp_path / "a", n_images=2, seed=0)
    marker = json.loads((root / data_mod.EXPORT_MARKER).read_text())
    on_disk = sorted(
        str(p.relative_to(root)) + ("/" if p.is_dir() else "")
        for p in root.rglob("*")
        if p.name != data_mod.EXPORT_MARKER
    )
    assert marker["files"] == on_disk and "data/annotations.json" in on_disk
    assert data_mod.read_export_settings(root)["n_images"] == 2
    export_amber(root, n_images=3, seed=0, overwrite=True)  # only its own files: replaced
    assert data_mod.read_export_settings(root)["n_images"] == 3


def test_files_keep_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        files_mod.write_json(tmp_path / "m.json", {"a": 1})
        root = export_amber(tmp_path / "e", n_images=2, seed=0)
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert root.stat().st_mode & 0o777 == 0o755
    assert (root / "data" / "annotations.json").stat().st_mode & 0o777 == 0o644


def test_reproduce_refuses_one_output_dir_for_every_notebook(tmp_path):
    with pytest.raises(ValueError, match="OUTPUT_DIR is set per notebook.*--output"):
        run_notebooks(tmp_path / "out", {"OUTPUT_DIR": str(tmp_path)})
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"must be Python names.*'OUTPUT_DIR '"):
        run_notebooks(tmp_path / "out", {"OUTPUT_DIR ": str(tmp_path)})  # a trailing space
    with pytest.raises(ValueError, match="--only names no notebook"):
        run_notebooks(tmp_path / "out", {}, only=[])
    assert not (tmp_path / "out").exists()
    # a name no notebook of the run declares (a typo, or another notebook's parameter)
    with pytest.raises(ValueError, match=r"has the parameter\(s\) \['N_IMAGE'\]"):
        run_notebooks(tmp_path / "out", {"N_IMAGE": 4})
    with pytest.raises(ValueError, match=r"\['IMAGES_PER_QUESTION'\]"):
        run_notebooks(tmp_path / "out", {"IMAGES_PER_QUESTION": 4}, only=["00_quickstart"])
    assert not (tmp_path / "out").exists()


def test_reproduce_never_overwrites_the_source_notebooks_or_a_users_files(tmp_path):
    from lvlm_kit.reproduce import NOTEBOOKS

    before = snapshot(NOTEBOOKS)
    for out in (NOTEBOOKS, NOTEBOOKS / "sub"):
        with pytest.raises(ValueError, match="notebooks' own folder.*overwrite the source"):
            run_notebooks(out, {}, only=["00_quickstart"])
    assert snapshot(NOTEBOOKS) == before
    out = tmp_path / "out"
    out.mkdir()
    (out / "00_quickstart.ipynb").write_text('{"cells": [], "metadata": {}}')  # the user's
    (out / "REPORT.md").write_text("# my notes")
    mine = snapshot(out)
    with pytest.raises(ValueError, match="00_quickstart.ipynb, REPORT.md, which the kit did not"):
        run_notebooks(out, {}, only=["00_quickstart"])
    assert snapshot(out) == mine


def test_the_report_leaves_out_a_failed_notebooks_old_claims_and_a_foreign_file(tmp_path):
    from test_claims import CFG, C, flat, traces

    from lvlm_kit import claims
    from lvlm_kit.report import write_report
    from lvlm_kit.reproduce import _is_kit_file

    for name in ("01_a", "03_b"):
        (tmp_path / name).mkdir()
        result = claims.near_zero_shallow(traces(), C(flat()), CFG)
        (tmp_path / name / "claims.json").write_text(json.dumps([result.as_dict()]))
        (tmp_path / name / "metrics.json").write_text("{}")
    (tmp_path / "04_c").mkdir()
    (tmp_path / "04_c" / "claims.json").write_text('{"mine": 1}')
    md, page = write_report(tmp_path, {"03_b": "ParameterError: bad"})
    text = md.read_text()
    assert "Claims measured: 1;" in text and "(notebook `03_b`)" not in text
    assert "**Notebook 03_b failed** (ParameterError: bad); its claims are missing." in text
    assert "**04_c/claims.json is not the kit's**" in text
    html = page.read_text()
    assert "Notebook 03_b failed (ParameterError: bad)" in html and html.count("<tr>") == 2
    assert _is_kit_file(md) and _is_kit_file(page)


def test_two_images_with_one_stem_are_two_items(tmp_path, tiny_llava):
    pics = tmp_path / "pics"
    pics.mkdir()
    for suffix, value in ((".jpg", 10), (".png", 200)):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(pics / f"cat{suffix}")
    items = dataset_items(pics, PROMPT)
    assert sorted(i.id for i in items) == ["cat.jpg", "cat.png"]
    run = trace_dataset(tiny_llava, items, tmp_path / "store", 2, progress=False)
    assert sorted(p.name for p in run.written) == ["cat.jpg.safetensors", "cat.png.safetensors"]


# ---- 3. no silent wrong results ---------------------------------------------------------


def test_16_bit_images_keep_their_values(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    for source in (tmp_path / "deep.png", ramp):
        rgb = np.asarray(load_image(source))
        assert rgb.shape == (32, 32, 3)
        assert rgb.min() == 0 and rgb.max() == 255 and abs(rgb.mean() - 127.5) < 1


def test_an_unknown_watch_word_is_refused(tiny_llava, image):
    with pytest.raises(ValueError, match="'zebra' is not in the model's vocabulary.*<unk>"):
        trace(tiny_llava, image, PROMPT, 2, watch=["zebra"])
    assert trace(tiny_llava, image, PROMPT, 2, watch=["boat"]).watch_ids.shape == (1,)


@pytest.fixture(scope="module")
def store(tiny_llava, tmp_path_factory):
    root = tmp_path_factory.mktemp("s")
    amber = export_amber(root / "amber", n_images=3, seed=1)
    out = root / "store"
    trace_dataset(tiny_llava, dataset_items(amber), out, 2, source=str(amber), progress=False)
    return amber, out


def test_evaluate_refuses_another_dataset_with_the_same_ids(store, tmp_path):
    amber, out = store
    other = export_amber(tmp_path / "other", n_images=3, seed=2)  # ids 1..3, other images
    before = snapshot(out)
    with pytest.raises(StoreError, match="3 traces .* other images than"):
        evaluate_store(out, other)
    assert snapshot(out) == before
    assert evaluate_store(out, amber)["n_responses"] == 3


def test_a_read_only_store_is_refused_before_scoring(store, monkeypatch):
    amber, out = store

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files_mod.tempfile, "mkstemp", read_only)
    monkeypatch.setattr("lvlm_kit.store.score_generative", lambda *a: pytest.fail("scored"))
    with pytest.raises(StoreError, match="cannot be written.*Read-only file system"):
        evaluate_store(out, amber)


def test_a_rerun_with_other_settings_is_refused_unless_overwrite(store, tmp_path, saved_llava):
    amber, _ = store
    out = tmp_path / "store"
    args = ["trace", "--model", str(saved_llava), "--data", str(amber), "--out", str(out)]
    assert main([*args, "--max-new-tokens", "2"]) == 0
    before = snapshot(out)
    for change in (["--max-new-tokens", "3"], ["--lens-norm", "raw"], ["--prompt", "Hi."]):
        with pytest.raises(StoreError, match="other settings.*--overwrite"):
            main([*args, "--max-new-tokens", "2", *change])  # the last of two flags wins
    with pytest.raises(StoreError, match=r"max_new_tokens: 2 -> 3"):
        main([*args, "--max-new-tokens", "3", "--model", "nobody/not-loaded"])  # before loading
    assert snapshot(out) == before
    assert main([*args, "--max-new-tokens", "3", "--overwrite"]) == 0
    assert {Trace.load(p).n_tokens for p in out.glob("*.safetensors")} == {3}
    assert json.loads((out / "store.json").read_text())["max_new_tokens"] == 3


def test_amber_entries_are_checked_against_the_schema(tmp_path):
    root = export_amber(tmp_path / "a", n_images=2, seed=0)
    path = root / "data" / "annotations.json"
    good = json.loads(path.read_text())
    cases = [
        (
            {**good[0], "truth": "dog"},
            r"annotations.json' entry 0 \(id 1\): 'truth' must be a list",
        ),
        ({k: v for k, v in good[0].items() if k != "truth"}, "entry 0 .*missing key 'truth'"),
        ({**good[0], "id": "one"}, "entry 0 .*'id' must be an integer"),
        ({**good[0], "hallu": [1, 2]}, "entry 0 .*'hallu' must be a list of words"),
    ]
    for entry, message in cases:
        path.write_text(json.dumps([entry, *good[1:]]))
        with pytest.raises(ValueError, match=message):
            read_amber(root)
    path.write_text(json.dumps(good))
    queries = root / "data" / "query" / "query_generative.json"
    queries.write_text(json.dumps([{"id": 1, "image": "AMBER_1.jpg"}]))
    with pytest.raises(ValueError, match="query_generative.json' entry 0 .*missing key 'query'"):
        read_amber(root)


# ---- 4. one bad item does not block a dataset; concurrent runs share it ------------------


def test_a_corrupt_image_is_recorded_and_the_rest_traced(tmp_path, saved_llava):
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(pics / name)
    (pics / "b.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "store"
    args = [
        "trace",
        "--model",
        str(saved_llava),
        "--data",
        str(pics),
        "--out",
        str(out),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "2",
    ]
    with pytest.raises(ValueError, match="b.png' is not an image file"):
        main(args)  # without --keep-going the first error stops the run
    assert main([*args, "--keep-going"]) == 1
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "a.png.safetensors",
        "c.png.safetensors",
    ]
    error = json.loads((out / "b.png.error.json").read_text())
    assert "is not an image file" in error["error"]
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(pics / "b.png")  # fixed
    assert main([*args, "--keep-going"]) == 0
    assert not (out / "b.png.error.json").exists() and (out / "b.png.safetensors").is_file()
    assert not list(out.glob(".*"))  # no lock or temp file left


def test_locks_of_live_runs_are_respected_and_dead_ones_taken_over(tmp_path, tiny_llava):
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(pics / name)
    out = tmp_path / "store"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    import socket

    from lvlm_kit import store as store_mod

    host = socket.gethostname()
    try:
        owner = {"pid": live.pid, "host": host, "start": store_mod._start_time(live.pid)}
        (out / ".a.png.lock").write_text(json.dumps(owner))
        (out / ".a.png.safetensors.x1.tmp").write_bytes(b"being written")  # the live writer's
        (out / ".b.png.lock").write_text(json.dumps({"pid": int(dead), "host": host}))
        (out / ".b.png.safetensors.x2.tmp").write_bytes(b"left by a dead run")
        run = trace_dataset(tiny_llava, dataset_items(pics, PROMPT), out, 2, progress=False)
        assert run.elsewhere == ["a.png"] and [p.name for p in run.written] == ["b.png.safetensors"]
        assert (out / ".a.png.safetensors.x1.tmp").exists() and (out / ".a.png.lock").exists()
        assert not (out / ".b.png.safetensors.x2.tmp").exists()
        assert not (out / ".b.png.lock").exists()
        assert "1 in progress in another run" in run.summary()
    finally:
        live.kill()
        live.wait()


def test_locks_that_never_expire_are_taken_over(tmp_path, tiny_llava):
    import socket

    from lvlm_kit import store as store_mod

    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(pics / name)
    out = tmp_path / "store"
    out.mkdir()
    host = socket.gethostname()
    old = time_now() - store_mod.STALE_AFTER - 60
    claims = {
        "a.png": {"pid": 1, "host": host, "start": "0"},  # pid 1 runs, but not this lock's
        "b.png": {"pid": os.getpid(), "host": host, "start": "12"},  # a reused pid
        "c.png": {"pid": 4242, "host": "elsewhere"},  # another host, no heartbeat for long
        "d.png": {"pid": 4242, "host": "elsewhere"},  # another host, fresh: respected
    }
    for name, owner in claims.items():
        (out / f".{name}.lock").write_text(json.dumps(owner))
    os.utime(out / ".c.png.lock", (old, old))
    run = trace_dataset(tiny_llava, dataset_items(pics, PROMPT), out, 2, progress=False)
    assert sorted(p.name for p in run.written) == [f"{n}.png.safetensors" for n in "abc"]
    assert run.elsewhere == ["d.png"] and (out / ".d.png.lock").exists()
    out2 = tmp_path / "store2"
    out2.mkdir()
    (out2 / ".d.png.lock").write_text(json.dumps(claims["d.png"]))
    rc = main(
        [
            "trace",
            "--model",
            str(save_tiny(tmp_path)),
            "--data",
            str(pics),
            "--out",
            str(out2),
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "2",
        ]
    )
    assert rc == 1  # an item left untraced is not a success


def time_now():
    import time

    return time.time()


def save_tiny(tmp_path):
    from conftest import save_loaded

    path = tmp_path / "tiny"
    if not path.exists():
        save_loaded(make_tiny_llava(), path)
    return path


def test_concurrent_runs_on_one_machine_share_the_cores(tmp_path, tiny_llava, monkeypatch):
    import socket

    from lvlm_kit import store as store_mod

    pics = tmp_path / "pics"
    pics.mkdir()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(pics / "a.png")
    out = tmp_path / "store"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    seen = []
    real = store_mod.trace

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(store_mod, "trace", spy)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        owner = {
            "pid": other.pid,
            "host": socket.gethostname(),
            "start": store_mod._start_time(other.pid),
        }
        (out / f".run.{other.pid}.json").write_text(json.dumps(owner))
        trace_dataset(tiny_llava, dataset_items(pics, PROMPT), out, 2, progress=False)
        assert seen == [4]  # two live runs on 8 cores
        assert torch.get_num_threads() == 8  # given back
        assert not (out / f".run.{os.getpid()}.json").exists()
    finally:
        torch.set_num_threads(threads)
        other.kill()
        other.wait()


def test_a_store_without_store_json_still_refuses_other_settings(store, tmp_path, tiny_llava):
    amber, src = store
    out = tmp_path / "copy"
    out.mkdir()
    for p in src.glob("*.safetensors"):
        (out / p.name).write_bytes(p.read_bytes())  # store.json deleted (or an older kit's)
    before = snapshot(out)
    items = dataset_items(amber)
    with pytest.raises(StoreError, match="3 traces made with other settings.*store.json missing"):
        trace_dataset(tiny_llava, items, out, 3, source=str(amber), progress=False)
    assert snapshot(out) == before
    run = trace_dataset(tiny_llava, items, out, 2, source=str(amber), progress=False)
    assert run.done == 3 and not run.written  # same settings: nothing to do


def test_a_file_named_like_an_item_that_is_not_a_trace_is_never_replaced(tmp_path, tiny_llava):
    amber = export_amber(tmp_path / "amber", n_images=2, seed=1)
    out = tmp_path / "store"
    out.mkdir()
    (out / "1.safetensors").write_bytes(b"\x00" * 4096)  # the user's weights, say
    before = snapshot(out)
    with pytest.raises(StoreError, match=r"\['1.safetensors'\].*not traces of this kit"):
        trace_dataset(tiny_llava, dataset_items(amber), out, 2, progress=False)
    assert snapshot(out) == before


def test_a_store_of_mixed_settings_is_not_scored(store, tmp_path, tiny_llava):
    amber, src = store
    out = tmp_path / "mixed"
    out.mkdir()
    for p in src.glob("*"):
        (out / p.name).write_bytes(p.read_bytes())
    first = sorted(out.glob("*.safetensors"))[0]
    tr = Trace.load(first)
    tr.meta["settings_digest"] = "0" * 16  # what a killed --overwrite leaves
    tr.save(first)
    with pytest.raises(StoreError, match="different settings.*did not finish.*--overwrite"):
        evaluate_store(out, amber)


def test_a_first_run_that_fails_at_once_leaves_no_settings_behind(tmp_path, tiny_llava):
    amber = export_amber(tmp_path / "amber", n_images=2, seed=1)
    out = tmp_path / "store"
    with pytest.raises(ValueError, match="max_new_tokens"):
        trace_dataset(tiny_llava, dataset_items(amber), out, 0, progress=False)
    assert not (out / "store.json").exists()
    run = trace_dataset(tiny_llava, dataset_items(amber), out, 2, progress=False)
    assert len(run.written) == 2


def test_evaluate_prints_the_scores_before_a_full_disk_can_lose_them(store, capsys, monkeypatch):
    amber, out = store

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_mod, "write_json", full)
    assert main(["evaluate", "--store", str(out), "--data", str(amber)]) == 1
    printed = capsys.readouterr()
    assert '"chair"' in printed.out and "No space left on device" in printed.err


# ---- 5. errors that say what to do, before the work -----------------------------------


def test_generation_limits_are_checked_before_generating(tiny_llava, image, monkeypatch):
    monkeypatch.setattr(tiny_llava.model, "generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(ValueError, match="exceed tiny-llava's context of 256 tokens"):
        trace(tiny_llava, image, PROMPT, 300)
    with pytest.raises(ValueError, match="exceed tiny-llava's context of 256 tokens"):
        generate_texts(tiny_llava, [image], [PROMPT], 300, progress=False)
    with pytest.raises(ValueError, match=r"top_k must be an int in 1..41 \(the vocabulary\)"):
        trace(tiny_llava, image, PROMPT, 2, top_k=100)
    with pytest.raises(ValueError, match="max_new_tokens must be an int of at least 1"):
        trace(tiny_llava, image, PROMPT, 0)


def test_an_empty_image_is_refused():
    with pytest.raises(ValueError, match="the image has size 0x0"):
        load_image(Image.new("RGB", (0, 0)))
    with pytest.raises(ValueError, match="has size 0x3"):
        load_image(np.zeros((3, 0, 3), np.uint8))


def test_a_damaged_trace_header_is_named(tiny_llava, image, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = trace(tiny_llava, image, PROMPT, 2).save(tmp_path / "t.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["lvlm_kit.trace"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for change, message in (
        ({"future_field": 1}, r"fields \['future_field'\].*newer version"),
        ({"prompt": None, "tokens": None}, None),
        ({"vocab": "x"}, "damaged vocab"),
    ):
        damaged = {**header, **change}
        damaged = {k: v for k, v in damaged.items() if v is not None}
        save_file(tensors, str(path), metadata={"lvlm_kit.trace": json.dumps(damaged)})
        with pytest.raises(TraceFileError, match=message or r"\['prompt', 'tokens'\] missing"):
            Trace.load(path)


def test_notebook_parameters_are_checked_by_name():
    ok = {
        "MODEL": "testbed",
        "QUANTIZATION": None,
        "DEVICE": "cpu",
        "DTYPE": "auto",
        "LENS_NORM": "final_norm",
        "DATA": "testbed",
        "PROMPT": "Describe.",
        "MAX_NEW_TOKENS": 8,
        "N_IMAGES": 2,
        "SEED": 0,
        "OUTPUT_DIR": None,
    }
    check_parameters(ok)
    for name, value in (
        ("N_IMAGES", 0),
        ("MAX_NEW_TOKENS", 2.5),
        ("LENS_NORM", "layernorm"),
        ("DATA", "/no/such/folder"),
        ("DTYPE", "float8"),
        ("SKIP_KS", [0]),
        ("QUANTIZATION", "3bit"),
        ("PROMPT", " "),
    ):
        with pytest.raises(ParameterError, match=rf"parameter {name}=.* -p {name} VALUE"):
            check_parameters({**ok, name: value})
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA GPU, and this machine has none"):
            check_parameters({**ok, "DEVICE": "cuda"})


def test_vqa_data_that_is_a_folder_says_what_it_needs(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder without AMBER's layout; VQA needs"):
        vqa_items(str(tmp_path), tmp_path, ["boat"], 2)
    amber = export_amber(tmp_path / "amber", n_images=4, seed=0)  # existence questions
    items = vqa_items(str(amber), tmp_path, ["boat", "fish"], 2)
    assert len(items) == 4 and all(i["answer"] in ("yes", "no") for i in items)
    assert items[0]["question"].startswith("Is there a ") and os.path.isfile(items[0]["image"])
    bad = tmp_path / "vqa.json"
    bad.write_text(json.dumps([{"image": "a.png"}]))
    with pytest.raises(ValueError, match="item 0: needs string 'image' and 'question'"):
        vqa_items(str(bad), tmp_path, [], 0)


def test_notebook_dtype_auto_is_float32_on_the_cpu(saved_llama, tmp_path):
    from lvlm_kit.notebook import load

    loaded = make_tiny_llava()
    loaded.model.to(torch.float16).save_pretrained(tmp_path / "half")
    loaded.processor.save_pretrained(tmp_path / "half")
    if not torch.cuda.is_available():
        assert load(str(tmp_path / "half"), device="auto").model.dtype == torch.float32
    assert load(str(tmp_path / "half"), device="cpu", dtype="bfloat16").model.dtype == (
        torch.bfloat16
    )


@pytest.mark.slow
@pytest.mark.kernels
def test_a_notebook_with_no_images_stops_at_its_parameters(tmp_path):
    import papermill as pm

    root = os.path.dirname(os.path.dirname(__file__))
    out = tmp_path / "out"
    with pytest.raises(pm.PapermillExecutionError, match="parameter N_IMAGES=0 cannot be used"):
        pm.execute_notebook(
            os.path.join(root, "notebooks", "03_js_divergence.ipynb"),
            str(tmp_path / "nb.ipynb"),
            parameters={"N_IMAGES": 0, "OUTPUT_DIR": str(out)},
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=120,
            start_timeout=120,
        )
    assert not out.exists()  # stopped before anything was written


@pytest.mark.kernels
@pytest.mark.slow
def test_reproduce_goes_on_after_a_failing_notebook_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "reproduce",
        "--output",
        str(out),
        "--only",
        "00_quickstart",
        "06_features_vqa",
        "-p",
        "IMAGES_PER_QUESTION",
        "0",
    ]
    assert main(args) == 1
    printed = capsys.readouterr().out
    assert (
        "notebook 06_features_vqa failed: ParameterError: parameter IMAGES_PER_QUESTION=0"
        in printed
    )
    assert (out / "00_quickstart" / "metrics.json").is_file()  # the other one ran
    assert "**Notebook 06_features_vqa failed** (ParameterError" in (out / "REPORT.md").read_text()


def test_a_utf16_amber_file_and_a_folder_named_like_an_image_are_named(tmp_path):
    root = export_amber(tmp_path / "a", n_images=2, seed=0)
    ann = root / "data" / "annotations.json"
    ann.write_bytes(ann.read_text().encode("utf-16"))
    with pytest.raises(ValueError, match="annotations.json' is not UTF-8 text.*iconv"):
        read_amber(root)
    (tmp_path / "x.png").mkdir()
    with pytest.raises(IsADirectoryError, match="'.*x.png' is a folder, not an image file"):
        load_image(tmp_path / "x.png")


def test_the_testbed_vqa_images_never_replace_a_users_files(tmp_path):
    items = vqa_items("testbed", tmp_path, ["boat"], 2, seed=0)
    folder = tmp_path / "vqa_images"
    assert [p.name for p in sorted(folder.glob("*.png"))] == ["boat_0.png", "boat_1.png"]
    assert vqa_items("testbed", tmp_path, ["boat"], 2, seed=0) == items  # reused
    (folder / "boat_5.png").write_bytes(b"my figure")
    before = snapshot(folder)
    with pytest.raises(FileExistsError, match="1 file.*vqa_items did not write.*boat_5.png"):
        vqa_items("testbed", tmp_path, ["boat"], 6, seed=0)  # would write boat_5.png
    assert snapshot(folder) == before
    mine = tmp_path / "other"
    user_folder(mine / "vqa_images")
    with pytest.raises(FileExistsError, match="not written by vqa_items"):
        vqa_items("testbed", mine, ["boat"], 1, seed=0)


def test_an_older_kits_export_is_taken_over_only_when_it_is_what_the_kit_wrote(tmp_path):
    root = export_amber(tmp_path / "testbed", n_images=2, seed=0)
    settings = data_mod.read_export_settings(root)
    (root / data_mod.EXPORT_MARKER).write_text(json.dumps(settings))  # an older kit's marker
    assert data_mod.read_export_settings(root) is None
    resolve_data("testbed", tmp_path, 3, seed=0)  # its files are the kit's: replaced
    assert data_mod.read_export_settings(root)["n_images"] == 3
    (root / data_mod.EXPORT_MARKER).write_text(json.dumps(data_mod.read_export_settings(root)))
    (root / "data" / "annotations.json").write_text("{}")  # edited by hand
    before = snapshot(root)
    with pytest.raises(FileExistsError, match="its files are not what the kit writes"):
        resolve_data("testbed", tmp_path, 2, seed=0)
    assert snapshot(root) == before
