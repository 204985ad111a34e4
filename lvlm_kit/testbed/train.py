"""Train the testbed LVLM: ``python -m lvlm_kit.testbed.train``.

Builds the word tokenizer and processor and a LLaVA-architecture model (:data:`SHAPE`,
one 16-px patch per grid cell, so 9 image tokens), then trains it in two stages, the way
LLaVA pairs a pretrained CLIP with an LLM:

1. :func:`align_vision` maps every image token onto the words for what it shows
   (category, colour, size, its group's count, the plural noun), training the CLIP tower,
   the projector and the word embeddings.
2. Instruction tuning with the vision tower frozen (as LLaVA-1.5) on freshly drawn scenes:
   30% detailed descriptions, 20% grounded descriptions ("describe the boat."), 50%
   single-word VQA.

Stage 1 gives each image token the words of what its cell shows, which is what lets the
decoder look an object up by name in VQA; ``--vision-steps 0`` skips it and trains end to
end from the start.

Fixed seed, one CPU thread (bit-reproducible), about 30 minutes. Writes the model and
processor with ``save_pretrained`` to ``data/testbed/model`` (or ``--out``) and its
quality (:mod:`lvlm_kit.testbed.evaluate`) to ``metrics.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..loading import REPO_ROOT
from .model import LlavaShape, build_model, build_processor, shape_dict
from .tokenizer import build_word_tokenizer
from .world import (
    CATEGORIES,
    COLOURS,
    DEFAULT_PRIORS,
    DESCRIBE_PROMPTS,
    GRID,
    NUMBER_WORDS,
    PLURALS,
    SIZES,
    Scene,
    describe,
    grounded_description,
    render,
    sample_scene,
    vqa_pairs,
)
from .world import vocabulary as world_vocabulary

#: The shipped model's size: 12 decoder layers so layer-wise stages have room, and one
#: 16-px patch per grid cell (with 8-px patches each object is split over four tokens and
#: no token carries its name).
SHAPE = LlavaShape(
    image_size=48, patch_size=16, vision_hidden=64, vision_layers=3, vision_heads=4,
    hidden=128, layers=12, heads=4, kv_heads=4, intermediate=352, max_positions=256,
)  # fmt: skip
TESTBED_DIR = REPO_ROOT / "data" / "testbed"
CI_SAMPLE = {"n_scenes": 24, "n_probe": 12}  # evaluate() sizes of the recorded CI sample


@dataclass
class TrainConfig:
    """Training settings (the defaults are the shipped model's recipe)."""

    steps: int = 4500  # instruction-tuning optimizer steps
    batch_size: int = 32
    lr: float = 7e-4  # peak AdamW learning rate (1.5e-3 stalls at the image-blind loss)
    warmup: int = 100  # linear warm-up steps, then cosine decay to 5% of peak
    weight_decay: float = 0.01
    describe_share: float = 0.3  # share of detailed-description examples
    ground_share: float = 0.2  # share of "describe the <category>." examples (rest: VQA)
    vision_steps: int = 800  # vision-alignment steps first (0: train end to end, unfrozen)
    vision_batch_size: int = 64
    vision_lr: float = 1e-3
    seed: int = 1
    threads: int = 1  # torch CPU threads (results differ in the last bits across counts)


def build_tokenizer():
    """The testbed's word-level tokenizer over the world's vocabulary."""
    return build_word_tokenizer(world_vocabulary())


def example(
    rng: random.Random,
    describe_share: float = TrainConfig.describe_share,
    ground_share: float = TrainConfig.ground_share,
):
    """One training example: ``(image, instruction, answer)``."""
    scene = sample_scene(rng)
    image = render(scene)
    u = rng.random()
    if u < describe_share:
        return image, rng.choice(DESCRIBE_PROMPTS), describe(scene)
    if u < describe_share + ground_share:
        return image, *grounded_description(scene, rng)
    question, answer = rng.choice(vqa_pairs(scene, rng))
    return image, question, answer


#: The word lists an image token is aligned with (:func:`patch_labels` rows, in order).
ALIGN_WORDS: tuple[tuple[str, ...], ...] = (
    CATEGORIES, tuple(COLOURS), tuple(SIZES), NUMBER_WORDS, tuple(PLURALS[c] for c in CATEGORIES),
)  # fmt: skip


def patch_labels(scene: Scene, side: int) -> torch.Tensor:
    """Per image token, the index (1-based, 0 = background) of its object's words.

    Rows follow :data:`ALIGN_WORDS`: category, colour, size, the count of its group
    ("two" on each of two boats) and the plural noun (which "how many" questions use).

    Args:
        scene: the scene.
        side: image tokens per row (image_size / patch_size, a multiple of the grid).

    Returns:
        ``[5, side * side]`` long tensor, row-major like the image tokens.
    """
    cells = torch.zeros(len(ALIGN_WORDS), GRID, GRID, dtype=torch.long)
    for g in scene.visible:
        category = CATEGORIES.index(g.category) + 1
        word = [category, list(COLOURS).index(g.colour) + 1, list(SIZES).index(g.size) + 1,
                g.count, category]  # fmt: skip
        for cell in g.cells:
            cells[:, cell // GRID, cell % GRID] = torch.tensor(word)
    per = side // GRID  # image tokens per cell side
    return cells.repeat_interleave(per, 1).repeat_interleave(per, 2).flatten(1)


def align_vision(
    model, processor, config: TrainConfig, rng: random.Random, progress: bool = True
) -> list[float]:
    """Stage 1: align image tokens with the words for what they show.

    Trains the CLIP tower, the projector and the input word embeddings so that each image
    token's projected feature (the decoder's input at that position) scores highest, by
    dot product with the word embeddings, on its cell's :data:`ALIGN_WORDS` (or a learned
    background score). A VQA answer then needs only to match the question's
    word against the image tokens, which plain end-to-end training on 2 CPU cores never
    found (answers ignored the question's object).

    Returns:
        Per-step losses (sum of the five cross-entropies).
    """
    tok = processor.tokenizer
    vision, projector = model.model.vision_tower, model.model.multi_modal_projector
    embed = model.get_input_embeddings().weight
    word_ids = [torch.tensor(tok.convert_tokens_to_ids(list(w))) for w in ALIGN_WORDS]
    background = torch.nn.Parameter(torch.zeros(len(ALIGN_WORDS)))
    params = [*vision.parameters(), *projector.parameters(), embed, background]
    opt = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=0.0)
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    losses: list[float] = []
    for _ in tqdm(range(config.vision_steps), desc="align vision", disable=not progress):
        scenes = [sample_scene(rng) for _ in range(config.vision_batch_size)]
        pixels = processor.image_processor([render(s) for s in scenes], return_tensors="pt")
        labels = torch.stack([patch_labels(s, side) for s in scenes])  # [B, 5, P]
        hidden = vision(pixels["pixel_values"], output_hidden_states=True).hidden_states
        feats = projector(hidden[model.config.vision_feature_layer][:, 1:])  # [B, P, d]
        loss = 0.0
        for k, ids in enumerate(word_ids):
            scores = 10.0 * feats @ embed[ids].T  # [B, P, n_words]
            scores = torch.cat([background[k].expand(*scores.shape[:2], 1), scores], -1)
            ce = torch.nn.functional.cross_entropy(scores.flatten(0, 1), labels[:, k].flatten())
            loss = loss + ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def collate(processor, examples) -> dict[str, torch.Tensor]:
    """Tokenize a batch; labels are -100 except on the answer and its closing ``</s>``."""
    tok = processor.tokenizer
    texts = []
    for _, instruction, answer in examples:
        conv = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}
        ]
        prompt = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        texts.append(f"{prompt} {answer}{tok.eos_token}")
    tok.padding_side = "right"
    batch = processor(
        images=[e[0] for e in examples], text=texts, return_tensors="pt", padding=True
    )
    labels = batch["input_ids"].clone()
    assistant = tok.convert_tokens_to_ids("assistant")
    for row in range(labels.shape[0]):
        start = int((labels[row] == assistant).nonzero()[-1]) + 2  # after "assistant :"
        labels[row, :start] = -100
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return dict(batch)


def train(
    config: TrainConfig, shape: LlavaShape = SHAPE, progress: bool = True
) -> tuple[torch.nn.Module, object, list[float]]:
    """Train a fresh model; returns ``(model, processor, per-step losses)``."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tok = build_tokenizer()
    processor = build_processor(shape, tok)
    model = build_model(shape, tok, seed=config.seed).train()
    if config.vision_steps:
        align_vision(model, processor, config, rng, progress)
        model.model.vision_tower.requires_grad_(False)  # as LLaVA-1.5: vision encoder frozen
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        t = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="train testbed", disable=not progress)
    for step in bar:
        batch = collate(
            processor,
            [
                example(rng, config.describe_share, config.ground_share)
                for _ in range(config.batch_size)
            ],  # fmt: skip
        )
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    return model.eval(), processor, losses


def main(argv: list[str] | None = None) -> int:
    """Train, save and evaluate the testbed model."""
    parser = argparse.ArgumentParser(description="Train the lvlm-kit testbed model.")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--vision-steps", type=int, default=TrainConfig.vision_steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--out", type=Path, default=TESTBED_DIR)
    parser.add_argument("--eval-only", action="store_true", help="re-evaluate a saved model")
    args = parser.parse_args(argv)
    config = TrainConfig(
        steps=args.steps, vision_steps=args.vision_steps, seed=args.seed, threads=args.threads
    )
    shape = SHAPE
    model_dir = args.out / "model"
    info_path = args.out / "training.json"
    if not args.eval_only:
        start = time.time()
        model, processor, losses = train(config, shape)
        # Save beside the old model, then swap: an interrupted run leaves the old one whole.
        tmp = args.out / f".model.{os.getpid()}.tmp"
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        tmp.rename(model_dir)
        info = {
            "config": config.__dict__,
            "shape": shape_dict(shape),
            "priors": [p.__dict__ for p in DEFAULT_PRIORS],
            "minutes": round((time.time() - start) / 60, 1),
            "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "first_loss": round(losses[0], 4),
            "loss_per_100_steps": [
                round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 4)
                for i in range(0, len(losses), 100)
            ],
        }
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    from ..loading import load_model
    from .evaluate import evaluate

    loaded = load_model(model_dir, dtype="float32", device_map="cpu")
    metrics = evaluate(loaded)
    # A small fixed sample that the test suite re-evaluates and compares with.
    metrics["ci_sample"] = evaluate(loaded, **CI_SAMPLE, progress=False)
    metrics["training"] = json.loads(info_path.read_text())
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
