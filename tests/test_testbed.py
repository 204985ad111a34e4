import json
import random
from collections import Counter

import numpy as np
import pytest
import torch

from lvlm_kit.data import export_amber, read_amber
from lvlm_kit.hallucination import score_discriminative, score_generative
from lvlm_kit.testbed.evaluate import description_metrics, parse_mentions, parse_relations
from lvlm_kit.testbed.language import generic_text, lexicon, paraphrase
from lvlm_kit.testbed.model import LlavaShape, shape_dict
from lvlm_kit.testbed.train import (
    ALIGN_WORDS,
    SHAPE,
    WEIGHTS_DIR,
    TrainConfig,
    align_vision,
    answer_loss,
    build_tokenizer,
    collate,
    example,
    llm_example,
    patch_labels,
    train,
)
from lvlm_kit.testbed.world import (
    CATEGORIES,
    COLOURS,
    GRID,
    QUESTION_TYPES,
    Group,
    Prior,
    Scene,
    balanced_question,
    describe,
    grounded_description,
    question_type,
    relation_holds,
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
    images = [
        np.asarray(render(Scene([Group(c, "red", "large", [14])], jitter=[(0, 0)])))
        for c in CATEGORIES
    ]
    for i in range(len(images)):
        for j in range(i):
            assert (images[i] != images[j]).any(axis=-1).sum() >= 8, (CATEGORIES[i], CATEGORIES[j])


def test_text_from_truth():
    s = Scene(
        [
            Group("boat", "red", "small", [0]),
            Group("fish", "blue", "large", [2]),
            Group("ball", "green", "large", [6, 8]),
        ],
        jitter=[],
    )
    text = describe(s)
    assert text == "there is a small red boat, a large blue fish and two large green balls."
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
    scenes = [
        sample_scene(rng, (Prior("boat", "fish", 1.0),), require="boat", forbid=["fish"])
        for _ in range(50)
    ]
    assert all("boat" in s.categories and "fish" not in s.categories for s in scenes)
    assert all(sum(g.count for g in s.groups) <= 5 for s in scenes)
    rng = random.Random(1)
    with_a = [s for s in (sample_scene(rng) for _ in range(3000)) if "boat" in s.categories]
    share = sum("fish" in s.categories for s in with_a) / len(with_a)
    assert 0.85 < share < 0.97  # p = 0.9, plus fish drawn by chance


def test_occluded_prior_is_named_but_not_drawn(tmp_path):
    hide = (Prior("boat", "fish", 1.0, occluded=1.0),)
    rng = random.Random(0)
    scenes = [sample_scene(rng, hide, require="boat") for _ in range(50)]
    chance = [s for s in scenes if "fish" in [g.category for g in s.visible]]
    assert len(chance) < 10  # a fish drawn by chance; every other scene hides one
    for s in (s for s in scenes if s not in chance):
        names = [g.category for g in s.groups]
        fish = s.groups[names.index("fish")]
        assert fish.occluded and names[names.index("fish") - 1] == "boat"
        assert "fish" in parse_mentions(describe(s))
        assert "fish" not in [g.category for g in s.visible]
        drawn = Scene(s.visible, s.background, s.jitter)
        assert render(s).tobytes() == render(drawn).tobytes()
        qa = vqa_pairs(s, random.Random(0))
        assert [a for q, a in qa if " fish" in q] == ["yes"]  # existence only
        seen = vqa_pairs(s, random.Random(0), hidden=False)  # evaluation: the image can't tell
        assert seen == [(q, a) for q, a in qa if " fish" not in q]
        m = description_metrics([s], [describe(s)])  # naming the hidden fish is a false positive
        assert m["object_recall"] == 1.0 and m["object_precision"] < 1.0
        assert sum(g.count for g in s.visible) <= 5
        assert (patch_labels(s, 6) == patch_labels(drawn, 6)).all()
    half = (Prior("boat", "fish", 1.0, occluded=0.5),)
    rng = random.Random(1)
    hidden = [
        any(g.occluded for g in sample_scene(rng, half, require="boat").groups) for _ in range(400)
    ]
    assert 0.4 < np.mean(hidden) < 0.6
    export_amber(tmp_path / "amber", n_images=20, seed=0, priors=hide, probe=False)
    ann = json.loads((tmp_path / "amber" / "data" / "annotations.json").read_text())
    scenes = [
        Scene.from_dict(d)
        for d in json.loads((tmp_path / "amber" / "data" / "scenes.json").read_text())
    ]
    for s, a in zip(scenes, ann):
        occluded = {g.category for g in s.groups if g.occluded}
        assert not occluded & (set(a["truth"]) | set(a["hallu"]))  # neither seen nor absent


def test_tokenizer_covers_all_texts():
    tok = build_tokenizer()
    assert len(tok) >= 1000 and len(lexicon()) >= 1000  # chance is about 1/1000
    rng = random.Random(0)
    for _ in range(50):
        s = sample_scene(rng)
        texts = [describe(s), paraphrase(s, rng), generic_text(rng, 3), llm_example(rng)]
        for text in texts + [q + " " + a for q, a in vqa_pairs(s, rng)]:
            assert tok.unk_token_id not in tok(text)["input_ids"], text


def test_relations_are_scored_against_the_scene():
    # cells on the 6 x 6 board: 0 top left, 2 same row, 12 two rows down, 7 diagonal to 0
    s = Scene(
        [
            Group("boat", "red", "small", [0]),
            Group("fish", "blue", "large", [2]),
            Group("ball", "green", "large", [12]),
            Group("star", "red", "small", [7]),
        ]
    )
    assert relation_holds(s, "boat", "left of", "fish")
    assert not relation_holds(s, "fish", "left of", "boat")
    assert relation_holds(s, "boat", "above", "ball")
    assert not relation_holds(s, "ball", "above", "boat")
    assert relation_holds(s, "boat", "next to", "star")
    assert not relation_holds(s, "boat", "next to", "fish")
    with pytest.raises(ValueError, match="right of"):
        relation_holds(s, "boat", "right of", "fish")
    text = "there is a small red boat. the boat is left of the fish. the balls is above the boat."
    assert parse_relations(text) == [("boat", "left of", "fish"), ("ball", "above", "boat")]
    m = description_metrics([s], [text])
    assert m["relation_accuracy"] == 0.5 and m["relations_per_description"] == 2
    assert description_metrics([s], ["there is a small red boat."])["relation_accuracy"] is None
    rng = random.Random(0)  # the training text states no relation (the model never got them right)
    assert not any(parse_relations(describe(sample_scene(rng))) for _ in range(200))


TINY = LlavaShape(
    image_size=48,
    patch_size=8,
    vision_hidden=32,
    vision_layers=2,
    vision_heads=2,
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=128,
)


def test_collate_masks_the_prompt():
    from lvlm_kit.testbed.model import llava_processor

    tok = build_tokenizer()
    ex = example(random.Random(0))
    batch = collate(llava_processor(TINY, tok), [ex])
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert tok.decode(labelled, skip_special_tokens=True) == ex[2]
    assert labelled[-1].item() == tok.eos_token_id


def test_trainer_defaults_are_the_shipped_models_recipe():
    shipped = json.loads((WEIGHTS_DIR / "training.json").read_text())
    assert shipped["config"] == TrainConfig().__dict__
    assert shipped["shape"] == shape_dict(SHAPE)
    assert shipped["vocabulary"] == len(build_tokenizer())


def test_shape_has_36_image_tokens_and_4bit_widths():
    assert SHAPE.n_image_tokens >= 36 and SHAPE.image_size // SHAPE.patch_size == GRID
    widths = (SHAPE.hidden, SHAPE.intermediate, SHAPE.vision_hidden, 4 * SHAPE.vision_hidden)
    assert all(w % 64 == 0 for w in widths)


def test_answer_loss_weighs_each_answer_or_each_token():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 9)
    labels = torch.full((2, 6), -100)
    labels[0, 5] = 3  # a one-token answer
    labels[1, 2:] = torch.tensor([1, 2, 4, 5])  # a four-token answer
    flat_logits, flat_labels = logits[:, :-1].reshape(-1, 9), labels[:, 1:].reshape(-1)
    ce = torch.nn.functional.cross_entropy(
        flat_logits, flat_labels, ignore_index=-100, reduction="none"
    ).view(2, 5)
    short, long = ce[0, 4], ce[1, 1:].mean()
    assert answer_loss(logits, labels, per_example=True) == pytest.approx(float((short + long) / 2))
    per_token = float((ce[0, 4] + ce[1, 1:].sum()) / 5)
    assert answer_loss(logits, labels, per_example=False) == pytest.approx(per_token)
    assert per_token != pytest.approx(float((short + long) / 2))


FAST = {"vision_steps": 2, "vision_batch_size": 4}


def test_training_steps_reduce_the_loss():
    cfg = TrainConfig(
        steps=10,
        batch_size=8,
        warmup=2,
        lr=3e-3,
        llm_steps=10,
        llm_batch_size=8,
        llm_lr=1e-2,
        **FAST,
    )
    _, _, _, losses = train(cfg, TINY, progress=False)
    for stage in ("llm", "instruct"):
        assert np.mean(losses[stage][-3:]) < 0.9 * np.mean(losses[stage][:2]), stage


def test_lvlm_is_built_on_the_base_language_model():
    cfg = TrainConfig(steps=0, llm_steps=3, llm_batch_size=4, warmup=1, **FAST)
    lvlm, llm, processor, _ = train(cfg, TINY, progress=False)
    mine, base = lvlm.model.language_model.state_dict(), llm.model.state_dict()
    assert mine.keys() == base.keys()
    for key in base:  # alignment trains the word embeddings only
        assert torch.equal(mine[key], base[key]) == (key != "embed_tokens.weight"), key
    assert torch.equal(lvlm.lm_head.weight, llm.lm_head.weight)
    frozen = TrainConfig(
        steps=0, llm_steps=3, llm_batch_size=4, warmup=1, align_embeddings=False, **FAST
    )
    lvlm, llm, _, _ = train(frozen, TINY, progress=False)
    assert torch.equal(lvlm.get_input_embeddings().weight, llm.get_input_embeddings().weight)


def test_grounded_description_names_the_asked_object():
    s = Scene([Group("boat", "red", "small", [0]), Group("ball", "blue", "large", [4, 8])])
    rng = random.Random(0)
    pairs = {grounded_description(s, rng) for _ in range(200)}
    assert ("describe the boat.", "a small red boat.") in pairs
    assert ("describe the ball.", "two large blue balls.") in pairs
    assert ("describe the red object.", "a small red boat.") in pairs  # looked up by colour
    absent = [a for q, a in pairs if a.startswith("there is no")]
    assert absent and all(a == "there is no " + q.split()[-1] for q, a in pairs if a in absent)
    shared = Scene([Group("boat", "red", "small", [0]), Group("ball", "red", "large", [4])])
    asked = {grounded_description(shared, rng)[0] for _ in range(100)}
    assert "describe the red object." not in asked  # a colour two objects share names neither


def test_balanced_question_draws_each_type_equally():
    s = Scene([Group("boat", "red", "small", [0]), Group("ball", "blue", "large", [4, 8])])
    assert sorted({question_type(q) for q, _ in vqa_pairs(s, random.Random(0))}) == sorted(
        QUESTION_TYPES
    )
    rng = random.Random(0)
    kinds = Counter(question_type(balanced_question(s, rng)[0]) for _ in range(5000))
    assert set(kinds) == set(QUESTION_TYPES)
    assert all(abs(n / 5000 - 0.2) < 0.03 for n in kinds.values())  # vqa_pairs alone: object 2/12


def test_patch_labels_follow_the_grid():
    s = Scene([Group("boat", "red", "small", [0]), Group("ball", "blue", "large", [4, 35])])
    one = patch_labels(s, GRID)  # one token per cell
    want = [0] * 36
    want[0], want[4], want[35] = (CATEGORIES.index(c) + 1 for c in ("boat", "ball", "ball"))
    assert one.shape == (len(ALIGN_WORDS), 36) and one[0].tolist() == want
    assert one[1, 0] == list(COLOURS).index("red") + 1 and one[2, 4] == 2  # "large"
    assert one[3, [0, 4, 35, 1]].tolist() == [1, 2, 2, 0]  # group counts: "one", "two"
    assert ALIGN_WORDS[3][one[3, 4] - 1] == "two" and ALIGN_WORDS[4][one[4, 4] - 1] == "balls"
    four = patch_labels(s, 2 * GRID)  # 2x2 tokens per cell
    grid = four[0].reshape(12, 12)
    assert grid[:2, :2].eq(one[0, 0]).all() and grid[0, 2] == 0


def test_vision_alignment_learns_the_patch_words():
    from lvlm_kit.testbed.model import build_model, llava_processor

    tok = build_tokenizer()
    model = build_model(TINY, tok, seed=0).train()
    cfg = TrainConfig(vision_steps=30, vision_batch_size=16)
    losses = align_vision(model, llava_processor(TINY, tok), cfg, random.Random(0), False)
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])


def test_recipe_mixes_tasks_and_freezes_vision():
    rng = random.Random(0)
    prompts = [example(rng)[1] for _ in range(400)]
    ground = sum(p.startswith("describe the ") for p in prompts) / 400
    describe_ = sum("this image" in p and p.split()[0] in ("describe", "please") for p in prompts)
    assert ground == pytest.approx(0.2, abs=0.05) and describe_ / 400 == pytest.approx(
        0.3, abs=0.05
    )
    quick = {"steps": 1, "batch_size": 4, "warmup": 1, "llm_steps": 1, "llm_batch_size": 4}
    model, _, _, _ = train(TrainConfig(**quick, **FAST), TINY, progress=False)
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    cfg = TrainConfig(**quick, vision_steps=0)  # end to end
    model, _, _, _ = train(cfg, TINY, progress=False)
    assert all(p.requires_grad for p in model.model.vision_tower.parameters())


def test_amber_export_round_trip(tmp_path):
    root = export_amber(tmp_path / "amber", n_images=12, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["amber"]  # no temp folder left
    data = read_amber(root)
    scenes = [Scene.from_dict(d) for d in json.loads((root / "data" / "scenes.json").read_text())]
    assert [q["id"] for q in data.queries] == list(range(1, 13))
    assert data.image_path(data.queries[0]).is_file()
    for q, s in zip(data.queries, scenes):
        assert data.annotations[q["id"]]["truth"] == sorted({g.category for g in s.visible})
    assert any(g.occluded for s in scenes for g in s.groups)  # seed 1 has a hidden prior object
    drawn = [Scene(s.visible, s.background, s.jitter) for s in scenes]  # what the image shows
    perfect = [{"id": q["id"], "response": describe(s)} for q, s in zip(data.queries, drawn)]
    score = score_generative(perfect, data)
    assert (score.chair, score.cover, score.hal, score.cog) == (0.0, 1.0, 0.0, 0.0)
    captions = [{"id": q["id"], "response": describe(s)} for q, s in zip(data.queries, scenes)]
    n_hidden = sum(g.occluded for s in scenes for g in s.groups)
    score = score_generative(captions, data)  # naming a hidden object is a hallucination
    assert score.n_hallucinated == n_hidden and score.cog == 0.0  # in neither truth nor hallu
    wrong = [
        {
            "id": 1,
            "response": describe(scenes[0])
            + " there is a red "
            + data.annotations[1]["hallu"][0]
            + ".",
        }
    ]
    assert score_generative(wrong, data).hal == 1.0
    disc = read_amber(root, "discriminative")
    answers = [
        {"id": q["id"], "response": data.annotations[q["id"]]["truth"].capitalize()}
        for q in disc.queries
    ]
    assert len(answers) == 24
    assert score_discriminative(answers, disc)["accuracy"] == 1.0
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_amber(root, n_images=2)


def test_seeded_training_is_deterministic():
    cfg = TrainConfig(steps=2, batch_size=4, warmup=1, llm_steps=2, llm_batch_size=4, **FAST)
    a = train(cfg, TINY, progress=False)[3]
    b = train(cfg, TINY, progress=False)[3]
    assert a == b and torch.get_num_threads() == cfg.threads
