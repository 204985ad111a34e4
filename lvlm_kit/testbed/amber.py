"""Export testbed scenes in AMBER's on-disk layout, so the AMBER scorer runs on them unchanged.

Generative queries (ids 1..N, "Describe this image.") carry each scene's drawn objects as
``truth`` and every absent category as ``hallu`` (an occluded prior object is in neither:
not in the image, yet there); discriminative existence queries
(ids N+1..) ask "Is there a {object} in this image?" with truth "yes"/"no". The full
ground truth of every scene is also written to ``data/scenes.json``.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

from .world import CATEGORIES, DEFAULT_PRIORS, PLURALS, Prior, render, sample_scene


def export_amber(
    root: str | Path,
    n_images: int = 200,
    seed: int = 7,
    priors: tuple[Prior, ...] = DEFAULT_PRIORS,
    questions_per_image: int = 2,
    overwrite: bool = False,
    probe: bool = False,
) -> Path:
    """Write ``n_images`` fresh scenes as an AMBER-layout folder at ``root``.

    The folder is built next to ``root`` and renamed into place at the end, so an
    interrupted export leaves nothing behind.

    Args:
        root: destination folder (must not exist unless ``overwrite``).
        n_images: number of scenes/images.
        seed: seed of the scene draw.
        priors: planted priors applied while sampling (the training distribution).
        questions_per_image: existence questions per image (half present, half absent).
        overwrite: replace an existing folder.
        probe: draw planted-prior probe scenes instead: each holds a prior's A but not its
            B (priors taken in turn, none applied while sampling), where the trained model
            tends to hallucinate B.

    Returns:
        ``root``.
    """
    root = Path(root)
    if root.exists() and not overwrite:
        raise FileExistsError(f"'{root}' exists; pass overwrite=True or choose another folder.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        _write(tmp, n_images, seed, priors, questions_per_image, probe)
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write(root: Path, n: int, seed: int, priors, per_image: int, probe: bool) -> None:
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
