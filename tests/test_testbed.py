import json
import random

import numpy as np
import pytest
import torch

from lvlm_kit.hallucination import read_amber, score_discriminative, score_generative
from lvlm_kit.testbed.amber import export_amber
from lvlm_kit.testbed.evaluate import description_metrics, parse_mentions
from lvlm_kit.testbed.model import LlavaShape, shape_dict
from lvlm_kit.testbed.train import (
    SHAPE,
    TESTBED_DIR,
    TrainConfig,
    build_tokenizer,
    collate,
    example,
    train,
)
from lvlm_kit.testbed.world import (
    CATEGORIES,
    COLOURS,
    Group,
    Prior,
    Scene,
    describe,
    render,
    sample_scene,
    vqa_pairs,
)


def test_world_size_and_determinism():
    assert len(CATEGORIES) >= 12 and len(COLOURS) >= 6
    a = [sample_scene(random.Random(3)).to_dict() for _ in range(2)]
    assert a[0] == a[1]
    s = sample_scene(random.Random(3))
    assert np.array_equal(np.asarray(render(s)), np.asarray(render(Scene.from_dict(s.to_dict()))))


def test_categories_render_distinctly():
    images = [np.asarray(render(Scene([Group(c, "red", "large", [4])], jitter=[(0, 0)])))
              for c in CATEGORIES]  # fmt: skip
    for i in range(len(images)):
        for j in range(i):
            assert (images[i] != images[j]).any(axis=-1).sum() >= 8, (CATEGORIES[i], CATEGORIES[j])


def test_text_from_truth():
    s = Scene([Group("boat", "red", "small", [0]), Group("fish", "blue", "large", [2]),
               Group("ball", "green", "large", [6, 8])], jitter=[])  # fmt: skip
    text = describe(s)
    assert text == ("there is a small red boat, a large blue fish and two large green balls. "
                    "the boat is left of the fish.")  # fmt: skip
    assert parse_mentions(text) == {
        "boat": {"colour": "red", "size": "small", "count": 1},
        "fish": {"colour": "blue", "size": "large", "count": 1},
        "ball": {"colour": "green", "size": "large", "count": 2},
    }
    qa = dict(vqa_pairs(s, random.Random(0)))
    assert qa["what colour is the boat?"] == "red"
    assert qa["how many balls are there?"] == "two"
    assert qa["what is the blue object?"] == "fish"
    assert qa["is there a boat in this image?"] == "yes"
    assert "no" in qa.values()
    m = description_metrics([s], ["there is a small red boat and a large red house."])
    assert m["object_precision"] == 0.5 and m["object_recall"] == pytest.approx(1 / 3)
    assert m["colour_accuracy"] == 1.0


def test_planted_prior_and_constraints():
    rng = random.Random(0)
    scenes = [sample_scene(rng, (Prior("boat", "fish", 1.0),), require="boat") for _ in range(50)]
    assert all("fish" in s.categories for s in scenes)
    rng = random.Random(0)
    scenes = [sample_scene(rng, (Prior("boat", "fish", 1.0),), require="boat", forbid=["fish"])
              for _ in range(50)]  # fmt: skip
    assert all("boat" in s.categories and "fish" not in s.categories for s in scenes)
    assert all(sum(g.count for g in s.groups) <= 5 for s in scenes)
    rng = random.Random(1)
    with_a = [s for s in (sample_scene(rng) for _ in range(3000)) if "boat" in s.categories]
    share = sum("fish" in s.categories for s in with_a) / len(with_a)
    assert 0.85 < share < 0.97  # p = 0.9, plus fish drawn by chance


def test_tokenizer_covers_all_texts():
    tok = build_tokenizer()
    rng = random.Random(0)
    for _ in range(50):
        s = sample_scene(rng)
        for text in [describe(s), *[q + " " + a for q, a in vqa_pairs(s, rng)]]:
            assert tok.unk_token_id not in tok(text)["input_ids"], text


TINY = LlavaShape(image_size=48, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=2,
                  hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)  # fmt: skip


def test_collate_masks_the_prompt():
    from lvlm_kit.testbed.model import build_processor

    tok = build_tokenizer()
    ex = example(random.Random(0))
    batch = collate(build_processor(TINY, tok), [ex])
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert tok.decode(labelled, skip_special_tokens=True) == ex[2]
    assert labelled[-1].item() == tok.eos_token_id


def test_trainer_defaults_are_the_shipped_models_recipe():
    shipped = json.loads((TESTBED_DIR / "training.json").read_text())
    assert shipped["config"] == TrainConfig().__dict__
    assert shipped["shape"] == shape_dict(SHAPE)


def test_training_steps_reduce_the_loss():
    _, _, losses = train(TrainConfig(steps=10, batch_size=8, warmup=2, lr=3e-3), TINY,
                         progress=False)  # fmt: skip
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:2])  # 4.16 -> 3.53 here


def test_amber_export_round_trip(tmp_path):
    root = export_amber(tmp_path / "amber", n_images=12, seed=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["amber"]  # no temp folder left
    data = read_amber(root)
    scenes = [Scene.from_dict(d) for d in json.loads((root / "data" / "scenes.json").read_text())]
    assert [q["id"] for q in data.queries] == list(range(1, 13))
    assert data.image_path(data.queries[0]).is_file()
    for q, s in zip(data.queries, scenes):
        assert data.annotations[q["id"]]["truth"] == sorted(set(s.categories))
    perfect = [{"id": q["id"], "response": describe(s)} for q, s in zip(data.queries, scenes)]
    score = score_generative(perfect, data)
    assert (score.chair, score.cover, score.hal, score.cog) == (0.0, 1.0, 0.0, 0.0)
    wrong = [{"id": 1, "response": describe(scenes[0]) + " there is a red " +
              data.annotations[1]["hallu"][0] + "."}]  # fmt: skip
    assert score_generative(wrong, data).hal == 1.0
    disc = read_amber(root, "discriminative")
    answers = [{"id": q["id"], "response": data.annotations[q["id"]]["truth"].capitalize()}
               for q in disc.queries]  # fmt: skip
    assert len(answers) == 24
    assert score_discriminative(answers, disc)["accuracy"] == 1.0
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_amber(root, n_images=2)


def test_seeded_training_is_deterministic():
    cfg = TrainConfig(steps=2, batch_size=4, warmup=1)
    a = train(cfg, TINY, progress=False)[2]
    b = train(cfg, TINY, progress=False)[2]
    assert a == b and torch.get_num_threads() == cfg.threads
