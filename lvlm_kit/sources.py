"""Where a model comes from: the shipped testbed, the paper's presets, folders and hub ids.

:func:`resolve_source` turns any of them into what ``from_pretrained`` takes;
:func:`base_llm` names the language model an LVLM was built on (the paper's §6).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where the testbed's weights live inside the package (written by lvlm_kit.testbed.train).
TESTBED_WEIGHTS = Path(__file__).resolve().parent / "testbed" / "weights"
#: Named shortcuts for the models shipped in the package.
SHORTCUTS: dict[str, Path] = {
    "testbed": TESTBED_WEIGHTS / "lvlm",
    "testbed-llm": TESTBED_WEIGHTS / "llm",
}
#: Short names of the paper's models -> their hub ids.
PRESETS: dict[str, str] = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
}
#: The language model each LVLM was built on (the paper's §6 compares the two).
BASE_LLMS: dict[str, str] = {
    "testbed": "testbed-llm",
    "llava-hf/llava-1.5-7b-hf": "lmsys/vicuna-7b-v1.5",
    "llava-hf/llava-1.5-13b-hf": "lmsys/vicuna-13b-v1.5",
}


def base_llm(model: str) -> str:
    """The base language model of ``model`` (a shortcut, preset or hub id).

    Raises:
        KeyError: a model whose base LLM the kit does not know (:data:`BASE_LLMS`).
    """
    key = PRESETS.get(str(model), str(model))
    if key not in BASE_LLMS:
        raise KeyError(
            f"the base LLM of {model!r} is not known to the kit (it knows {sorted(BASE_LLMS)}); "
            "name it yourself, e.g. LLM_MODEL='lmsys/vicuna-7b-v1.5', or None for the LVLM's "
            "own decoder without an image."
        )
    return BASE_LLMS[key]


def resolve_source(id_or_dir: str | Path) -> str:
    """Turn a shortcut, folder or hub id into what ``from_pretrained`` takes.

    A preset (:data:`PRESETS`, e.g. ``"llava-1.5-7b"``) becomes its hub id. A name is a
    local folder when it exists on disk or starts with ``.``, ``/`` or ``~``; every other
    name (``llava-hf/llava-1.5-7b-hf``, ``lmsys/vicuna-7b-v1.5``) is a hub id,
    resolved by transformers from the cache or the hub.

    Raises:
        FileNotFoundError: a path-like name that does not exist, a folder without
            ``config.json``, or a shortcut whose model is missing.
    """
    key = PRESETS.get(str(id_or_dir), str(id_or_dir))
    if key in SHORTCUTS:
        path = SHORTCUTS[key]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the '{key}' model is not at {path}. Build it with "
                "`python -m lvlm_kit.testbed.train` (see README)."
            )
        return str(path)
    path = Path(key).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder '{path}' has no config.json; point at a folder written by "
                "save_pretrained()."
            )
        return str(path)
    if isinstance(id_or_dir, Path) or key.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"model folder '{path}' does not exist. Pass an existing folder, a hub id such as "
            f"'llava-hf/llava-1.5-7b-hf', or a shortcut: {sorted(SHORTCUTS)}."
        )
    return key
