"""Every source of images, prompts and ground truth, in one place.

- **AMBER** (Wang et al. 2023, the benchmark the paper uses): :func:`read_amber` reads its
  on-disk layout (see ``docs/AMBER.md``), :class:`AmberData` holds it.
- **Folders of images** with one prompt, and AMBER folders, as :class:`Item` lists
  (:func:`dataset_items`): what ``lvlm-kit trace`` and the notebooks trace.
- **The testbed world**: :func:`export_amber` writes fresh procedural scenes in AMBER's
  layout, so the same reader and scorer run on both; :func:`vqa_items` draws single-word
  VQA questions about them.
- :func:`resolve_data` / :func:`resolve_amber` / :func:`vqa_items` turn a notebook's
  ``DATA`` parameter (``"testbed"``, ``"testbed-probe"``, or a folder) into the above.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .files import read_marker, write_kit_folder

if TYPE_CHECKING:
    from .testbed.world import Prior

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ---- AMBER ------------------------------------------------------------------------------

QUERY_FILES = {
    "all": "query_all.json",
    "generative": "query_generative.json",
    "discriminative": "query_discriminative.json",
    "attribute": "query_discriminative-attribute.json",
    "existence": "query_discriminative-existence.json",
    "relation": "query_discriminative-relation.json",
}


def _read_utf8(path: Path) -> str:
    """The text of one of AMBER's files, which are UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"'{path}' is not UTF-8 text (AMBER's files are UTF-8; UTF-16 from an editor?). "
            f"Re-save it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 {path.name} > fixed`."
        ) from None


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(
            f"AMBER file missing: '{path}'. Expected AMBER's layout: <root>/data/query/*.json, "
            "<root>/data/annotations.json, relation.json, safe_words.txt, <root>/image/."
        )
    text = _read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"'{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "re-download or re-export it."
        ) from None


@dataclass
class AmberData:
    """One AMBER-layout dataset."""

    root: Path  # the folder holding data/ and image/
    queries: list[dict]  # {"id", "image", "query"} entries of the chosen query file
    annotations: dict[int, dict]  # id -> {"id", "type", "truth", ["hallu"]}
    relation: dict[str, list[str]]  # object word -> associated words
    safe_words: frozenset[str]

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every word of relation.json (keys and value lists)."""
        return relation_vocabulary(self.relation)

    def image_path(self, query: dict) -> Path:
        """Path of a query's image (``<root>/image/<file>``)."""
        return self.root / "image" / query["image"]


def hold_out(
    generative: AmberData, discriminative: AmberData, n: int
) -> tuple[list[Path], AmberData, AmberData]:
    """Set the first ``n`` images aside (to detect stages on) and keep the rest to judge.

    Args:
        generative: the describe-the-image queries, one per image.
        discriminative: the existence questions about the same images.
        n: how many images to set aside.

    Returns:
        ``(set-aside image paths, generative queries of the other images, discriminative
        queries of the other images)``.
    """
    aside = [generative.image_path(q) for q in generative.queries[:n]]
    judged = replace(generative, queries=generative.queries[n:])
    kept = {q["image"] for q in judged.queries}
    questions = replace(
        discriminative, queries=[q for q in discriminative.queries if q["image"] in kept]
    )
    return aside, judged, questions


def relation_vocabulary(relation: dict[str, list[str]]) -> frozenset[str]:
    """Every word of an AMBER relation.json (keys and value lists)."""
    return _vocabulary(tuple(sorted((k, tuple(v)) for k, v in relation.items())))


@lru_cache(maxsize=8)
def _vocabulary(items: tuple[tuple[str, tuple[str, ...]], ...]) -> frozenset[str]:
    return frozenset(k for k, _ in items) | frozenset(w for _, ws in items for w in ws)


def _is_words(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(w, str) for w in value)


def _is_id(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.isdigit()
    )


def _bad_entry(path: Path, index: int, entry: object, problem: str) -> ValueError:
    ident = entry.get("id") if isinstance(entry, dict) else None
    return ValueError(
        f"'{path}' entry {index} (id {ident!r}): {problem}. See docs/AMBER.md for the layout."
    )


def _check_queries(path: Path, entries: object) -> None:
    if not isinstance(entries, list):
        raise ValueError(f"'{path}' must hold a JSON list of queries.")
    for i, q in enumerate(entries):
        if not isinstance(q, dict):
            raise _bad_entry(path, i, q, "a query must be an object with id, image, query")
        for key in ("id", "image", "query"):
            if key not in q:
                raise _bad_entry(path, i, q, f"missing key '{key}'")
        if not _is_id(q["id"]):
            raise _bad_entry(path, i, q, "'id' must be an integer")
        if not isinstance(q["image"], str) or not isinstance(q["query"], str):
            raise _bad_entry(path, i, q, "'image' and 'query' must be strings")


def _check_annotations(path: Path, entries: object) -> None:
    if not isinstance(entries, list):
        raise ValueError(f"'{path}' must hold a JSON list of annotations.")
    for i, a in enumerate(entries):
        if not isinstance(a, dict):
            raise _bad_entry(path, i, a, "an annotation must be an object with id, type, truth")
        for key in ("id", "type", "truth"):
            if key not in a:
                raise _bad_entry(path, i, a, f"missing key '{key}'")
        if not _is_id(a["id"]):
            raise _bad_entry(path, i, a, "'id' must be an integer")
        if a["type"] == "generative":
            for key in ("truth", "hallu"):
                if key in a and not _is_words(a[key]):
                    got = type(a[key]).__name__
                    raise _bad_entry(path, i, a, f"'{key}' must be a list of words, not a {got}")
        elif str(a["truth"]).lower() not in ("yes", "no"):
            raise _bad_entry(path, i, a, f"'truth' of a {a['type']} question must be yes or no")


def read_amber(root: str | Path, queries: str = "generative") -> AmberData:
    """Read an AMBER-layout folder.

    Args:
        root: the folder holding ``data/`` and ``image/``.
        queries: which query file: one of :data:`QUERY_FILES` (``"generative"`` ...).

    Returns:
        The dataset.

    Raises:
        FileNotFoundError: a missing file (named).
        ValueError: malformed JSON (file and line named), an entry that does not follow
            AMBER's schema (file and entry named), or query ids with no annotation.
    """
    root = Path(root).expanduser()
    if queries not in QUERY_FILES:
        raise ValueError(f"queries={queries!r} is unknown; use one of {sorted(QUERY_FILES)}.")
    data = root / "data"
    query_list = _read_json(data / "query" / QUERY_FILES[queries])
    annotation_list = _read_json(data / "annotations.json")
    relation = _read_json(data / "relation.json")
    safe_path = data / "safe_words.txt"
    if not safe_path.is_file():
        raise FileNotFoundError(f"AMBER file missing: '{safe_path}'.")
    safe = frozenset(w.strip() for w in _read_utf8(safe_path).splitlines() if w.strip())
    _check_queries(data / "query" / QUERY_FILES[queries], query_list)
    _check_annotations(data / "annotations.json", annotation_list)
    if not isinstance(relation, dict) or not all(
        isinstance(k, str) and _is_words(v) for k, v in relation.items()
    ):
        raise ValueError(
            f"'{data / 'relation.json'}' must hold a JSON object of word -> list of words."
        )
    annotations = {int(a["id"]): a for a in annotation_list}
    missing = [q["id"] for q in query_list if int(q["id"]) not in annotations]
    if missing:
        raise ValueError(
            f"{len(missing)} query ids have no entry in '{data / 'annotations.json'}' "
            f"(first: {missing[:5]}); the query and annotation files do not belong together."
        )
    return AmberData(root, query_list, annotations, relation, safe)


# ---- items: what gets traced --------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One thing to trace."""

    id: str  # its name in a trace store: the AMBER query id, or the image's file name
    image: Path
    prompt: str


def dataset_items(
    data: str | Path, prompt: str | None = None, queries: str = "generative"
) -> list[Item]:
    """Items of an AMBER-layout folder or of a folder of images.

    Raises:
        FileNotFoundError: ``data`` is not a folder.
        ValueError: a folder of images without ``prompt``, or with no image in it.
    """
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: '{root}'")
    if (root / "data" / "annotations.json").is_file():
        amber = read_amber(root, queries)
        return [
            Item(str(q["id"]), amber.image_path(q), prompt or q["query"]) for q in amber.queries
        ]
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(
            f"'{root}' holds no AMBER layout and no images ({', '.join(IMAGE_SUFFIXES)})."
        )
    if not prompt:
        raise ValueError("a folder of images needs a prompt: pass --prompt 'Describe this image.'")
    # The file name, suffix included: cat.jpg and cat.png are two items.
    return [Item(p.name, p, prompt) for p in images]


# ---- the testbed world in AMBER's layout -------------------------------------------------


#: File that marks a folder as written by :func:`export_amber` (and so safe to replace).
EXPORT_MARKER = ".lvlm_kit_export.json"
#: The marker of the testbed's VQA images folder (:func:`vqa_items`).
VQA_MARKER = ".lvlm_kit_vqa.json"


def export_settings(
    n_images: int, seed: int, priors: tuple[Prior, ...], questions_per_image: int, probe: bool
) -> dict:
    """What :func:`export_amber` records in :data:`EXPORT_MARKER`: all the scenes depend on."""
    return {
        "n_images": n_images,
        "seed": seed,
        "priors": [asdict(p) for p in priors],
        "questions_per_image": questions_per_image,
        "probe": probe,
    }


def read_export_settings(root: str | Path) -> dict | None:
    """The settings of an export at ``root``, or None when ``root`` is not one.

    A marker that is not exactly what :func:`export_amber` writes (its settings and the list
    of files it wrote) does not count: ``{}`` or ``{"n_images": 2}`` is not an export.
    """
    marker = read_marker(root, EXPORT_MARKER)
    return None if marker is None else marker["settings"]


def export_amber(
    root: str | Path,
    n_images: int = 200,
    seed: int = 7,
    priors: tuple[Prior, ...] | None = None,
    questions_per_image: int = 2,
    overwrite: bool = False,
    probe: bool = False,
) -> Path:
    """Write ``n_images`` fresh scenes as an AMBER-layout folder at ``root``.

    The folder is built next to ``root`` and renamed into place at the end, so an
    interrupted export leaves nothing behind. It holds :data:`EXPORT_MARKER` with its
    settings and the files it wrote; ``overwrite`` replaces only a folder carrying a valid
    marker and nothing else (:func:`~lvlm_kit.files.write_kit_folder`).

    Args:
        root: destination folder (must not exist unless ``overwrite``).
        n_images: number of scenes/images.
        seed: seed of the scene draw.
        priors: planted priors applied while sampling (default: the training
            distribution's, ``DEFAULT_PRIORS`` of :mod:`lvlm_kit.testbed.world`).
        questions_per_image: existence questions per image (half present, half absent).
        overwrite: replace an earlier export at ``root``.
        probe: draw planted-prior probe scenes instead: each holds a prior's A but not its
            B (priors taken in turn, none applied while sampling), where the trained model
            tends to hallucinate B.

    Returns:
        ``root``.

    Raises:
        FileExistsError: ``root`` exists and is not an export (no valid marker), holds
            anything the export did not write (whatever ``overwrite`` says), or is an export
            and ``overwrite`` is False.
    """
    from .testbed.world import DEFAULT_PRIORS

    priors = DEFAULT_PRIORS if priors is None else priors
    settings = export_settings(n_images, seed, priors, questions_per_image, probe)
    if not overwrite and Path(root).exists() and read_marker(root, EXPORT_MARKER) is not None:
        raise FileExistsError(f"'{root}' exists; pass overwrite=True or choose another folder.")
    return write_kit_folder(
        root,
        EXPORT_MARKER,
        settings,
        _write_export,
        overwrite=True,
        what="export_amber",
        legacy=_old_export_settings,
    )


def _write_export(root: Path, settings: dict) -> None:
    from .testbed.world import Prior

    priors = tuple(Prior(**p) for p in settings["priors"])
    _write(
        root,
        settings["n_images"],
        settings["seed"],
        priors,
        settings["questions_per_image"],
        settings["probe"],
    )


def _old_export_settings(root: Path) -> dict | None:
    """The settings in an older kit's export marker (the settings alone, no file list)."""
    try:
        old = json.loads((root / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys = {"n_images", "seed", "priors", "questions_per_image", "probe"}
    return old if isinstance(old, dict) and set(old) == keys else None


def _write(root: Path, n: int, seed: int, priors, per_image: int, probe: bool) -> None:
    from .testbed.world import CATEGORIES, PLURALS, render, sample_scene

    rng = random.Random(seed)
    (root / "data" / "query").mkdir(parents=True)
    (root / "image").mkdir()
    if probe:
        pairs = [priors[i % len(priors)] for i in range(n)]
        scenes = [sample_scene(rng, (), require=p.a, forbid=[p.b]) for p in pairs]
    else:
        scenes = [sample_scene(rng, priors) for _ in range(n)]
    # Per scene: drawn categories, and those not there at all (an occluded one is neither).
    truths = [
        (sorted({g.category for g in s.visible}), [c for c in CATEGORIES if c not in s.categories])
        for s in scenes
    ]
    generative, discriminative, annotations = [], [], []
    for i, (scene, (present, absent)) in enumerate(zip(scenes, truths), start=1):
        name = f"AMBER_{i}.jpg"
        render(scene).save(root / "image" / name, quality=95, subsampling=0)
        generative.append({"id": i, "image": name, "query": "Describe this image."})
        annotations.append({"id": i, "type": "generative", "truth": present, "hallu": absent})
    next_id = n + 1
    for i, (present, absent) in enumerate(truths, start=1):
        asks = [(c, "yes") for c in rng.sample(present, min(len(present), (per_image + 1) // 2))]
        asks += [(c, "no") for c in rng.sample(absent, per_image // 2)]
        for obj, truth in asks:
            query = f"Is there a {obj} in this image?"
            discriminative.append({"id": next_id, "image": f"AMBER_{i}.jpg", "query": query})
            annotations.append(
                {"id": next_id, "type": "discriminative-hallucination", "truth": truth}
            )
            next_id += 1
    queries = {
        "query_generative.json": generative,
        "query_discriminative.json": discriminative,
        "query_discriminative-existence.json": discriminative,
        "query_discriminative-attribute.json": [],
        "query_discriminative-relation.json": [],
        "query_all.json": generative + discriminative,
    }
    for fname, value in queries.items():
        (root / "data" / "query" / fname).write_text(json.dumps(value, indent=1))
    (root / "data" / "annotations.json").write_text(json.dumps(annotations, indent=1))
    relation = {c: [PLURALS[c]] if PLURALS[c] != c else [] for c in CATEGORIES}
    (root / "data" / "relation.json").write_text(json.dumps(relation, indent=1))
    (root / "data" / "safe_words.txt").write_text("image\nobject\n")
    (root / "data" / "scenes.json").write_text(json.dumps([s.to_dict() for s in scenes]))


def _read_vqa(path: Path) -> list[dict]:
    if path.is_dir():
        raise ValueError(
            f"'{path}' is a folder without AMBER's layout; VQA needs an AMBER folder, a JSON "
            'file listing {"image", "question", "answer"} items, or DATA="testbed".'
        )
    if not path.is_file():
        raise FileNotFoundError(f"VQA file not found: '{path}'.")
    items = _read_json(path)
    if not isinstance(items, list) or not items:
        raise ValueError(f"'{path}' must hold a non-empty JSON list of VQA items.")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("image", "question")
        ):
            raise ValueError(f"'{path}' item {i}: needs string 'image' and 'question' keys.")
        out.append({**item, "image": str(path.parent / Path(item["image"]).expanduser())})
    return out


# ---- a notebook's DATA parameter ---------------------------------------------------------

TESTBED_DATA = ("testbed", "testbed-probe")


def _data_root(data: str, output_dir: str | Path, n_images: int, seed: int) -> str:
    from .testbed.world import DEFAULT_PRIORS

    if data not in TESTBED_DATA:
        return data
    root = Path(output_dir) / data.replace("-", "_")
    probe = data == "testbed-probe"
    if read_export_settings(root) != export_settings(n_images, seed, DEFAULT_PRIORS, 2, probe):
        export_amber(root, n_images, seed, probe=probe, overwrite=True)
    return str(root)


def resolve_data(
    data: str,
    output_dir: str | Path,
    n_images: int,
    seed: int = 0,
    prompt: str | None = None,
    queries: str = "generative",
) -> list[Item]:
    """The first ``n_images`` items of ``data``.

    Args:
        data: ``"testbed"`` (fresh held-out scenes exported in AMBER's layout under
            ``output_dir``), ``"testbed-probe"`` (planted-prior probe scenes: A without B),
            an AMBER-layout folder, or a folder of images.
        output_dir: the notebook's output folder.
        n_images: how many items to use.
        seed: seed of the testbed scenes.
        prompt: overrides the queries' prompt (required for a folder of images).
        queries: AMBER query file.
    """
    return dataset_items(_data_root(data, output_dir, n_images, seed), prompt, queries)[:n_images]


def resolve_amber(
    data: str, output_dir: str | Path, n_images: int, seed: int = 0, queries: str = "generative"
):
    """AMBER data (annotations included) for the first ``n_images`` images of ``data``.

    Raises:
        ValueError: ``data`` is a plain folder of images (no annotations to score against).
    """
    root = Path(_data_root(data, output_dir, n_images, seed))
    if not (root / "data" / "annotations.json").is_file():
        raise ValueError(
            f"'{root}' has no AMBER annotations; this notebook needs AMBER's "
            "layout (or DATA='testbed')."
        )
    amber = read_amber(root, queries)
    images = {q["image"] for q in read_amber(root, "generative").queries[:n_images]}
    amber.queries = [q for q in amber.queries if q["image"] in images]
    return amber


def cell_truth(amber: AmberData) -> list[list[tuple[str, str] | None]]:
    """Per query of a testbed export and grid cell (row-major), what is drawn there.

    ``(category, colour)``, or None for an empty cell (an occluded object is not drawn).

    Raises:
        ValueError: ``amber`` is not a testbed export (no ``data/scenes.json``): real images
            have no per-cell ground truth.
    """
    from .testbed.world import GRID, Scene

    path = amber.root / "data" / "scenes.json"
    if not path.is_file():
        raise ValueError(
            f"'{amber.root}' has no data/scenes.json: per-cell ground truth exists only for the "
            "testbed's scenes (DATA='testbed' or 'testbed-probe')."
        )
    scenes = [Scene.from_dict(d) for d in _read_json(path)]
    out = []
    for q in amber.queries:
        scene = scenes[int(q["image"].split("_")[1].split(".")[0]) - 1]  # AMBER_<i>.jpg
        cells: list[tuple[str, str] | None] = [None] * (GRID * GRID)
        for g in scene.visible:
            for c in g.cells:
                cells[c] = (g.category, g.colour)
        out.append(cells)
    return out


def vqa_items(
    data: str, output_dir: str | Path, objects: list[str], per_question: int, seed: int = 0
) -> list[dict]:
    """Single-word VQA items: ``{"image", "question", "answer"}``.

    - ``data="testbed"``: ``per_question`` fresh scenes holding each of ``objects``, asked
      "what colour is the {object}?".
    - an AMBER folder: its existence questions ("Is there a {object} in this image?",
      answered yes or no), the first ``per_question * len(objects)`` of them.
    - a JSON file holding such a list: ``[{"image": "path/to.jpg", "question": "what
      colour is the car?", "answer": "red"}, ...]`` (``answer`` optional; relative image
      paths are taken from the file's folder).

    Raises:
        ValueError: a folder that is not AMBER's layout, or not such a JSON list (the entry
            named).
        FileNotFoundError: ``data`` does not exist.
    """
    root = Path(data).expanduser()
    if data not in TESTBED_DATA and (root / "data" / "annotations.json").is_file():
        amber = read_amber(root, "existence")
        return [
            {
                "image": str(amber.image_path(q)),
                "question": q["query"],
                "answer": str(amber.annotations[int(q["id"])]["truth"]).lower(),
            }
            for q in amber.queries[: per_question * len(objects)]
        ]
    if data not in TESTBED_DATA:
        return _read_vqa(root)
    from .testbed.world import render, sample_scene

    folder = Path(output_dir) / "vqa_images"
    rng = random.Random(seed)
    scenes = {
        f"{obj}_{i}.png": (obj, sample_scene(rng, require=obj))
        for obj in objects
        for i in range(per_question)
    }

    def write(tmp: Path, _: dict) -> None:
        for name, (_, scene) in scenes.items():
            render(scene).save(tmp / name)

    settings = {"objects": list(objects), "per_question": per_question, "seed": seed}
    write_kit_folder(folder, VQA_MARKER, settings, write, what="vqa_items")
    return [
        {
            "image": str(folder / name),
            "question": f"what colour is the {obj}?",
            "answer": next(g.colour for g in scene.groups if g.category == obj),
        }
        for name, (obj, scene) in scenes.items()
    ]
