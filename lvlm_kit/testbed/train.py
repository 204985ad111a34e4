"""Train the testbed: ``python -m lvlm_kit.testbed.train``.

Builds the word tokenizer and processor, then trains in three stages, the way LLaVA was
built on Vicuna and CLIP:

1. :func:`train_llm` trains the base language model (a Llama decoder, shipped as
   ``testbed-llm``) on text alone: scene descriptions and questions in the chat format
   (without images, so it learns what scenes usually hold, priors included), paraphrases,
   and the generic text of :mod:`~lvlm_kit.testbed.language` (a 1,100-word vocabulary).
2. :func:`align_vision` trains the CLIP tower and the projector (the language model frozen,
   as in LLaVA's first stage) so that each image token's projected feature scores highest,
   against the word embeddings, on the words for what its patch shows: category, colour,
   size, its group's count and the plural noun. The word embeddings are trained with them
   (``align_embeddings``; frozen, VQA fell from 0.87 to 0.81 in a 3000-step trial).
3. Instruction tuning of projector and language model (vision tower frozen, as LLaVA-1.5)
   on freshly drawn scenes: 30% detailed descriptions, 20% grounded descriptions
   ("describe the boat.", "describe the red object."), 50% single-word VQA (each question
   type equally often). Each example's answer weighs the same in the loss, however many
   tokens it has.

Fixed seed and thread count. Writes both models with ``save_pretrained`` under
``lvlm_kit/testbed/weights`` (or ``--out``): ``lvlm/`` (``load_model("testbed")``) and
``llm/`` (``load_model("testbed-llm")``), the recipe to ``training.json`` and the quality
(:mod:`lvlm_kit.testbed.evaluate`) to ``metrics.json``.
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
from transformers import LlamaForCausalLM

from ..sources import TESTBED_WEIGHTS
from .language import generic_text, lexicon, paraphrase
from .model import LlavaShape, build_model, llava_config, llava_processor, shape_dict
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
    balanced_question,
    describe,
    grounded_description,
    render,
    sample_scene,
)
from .world import vocabulary as world_vocabulary

#: The shipped model's size: 12 decoder layers so layer-wise stages have room; 96-px
#: images in 16-px patches, 36 image tokens, one per grid cell (a token that sees only a
#: fragment of its object is hard to look up by name); every width a multiple of 64, which
#: bitsandbytes' 4-bit CPU kernel needs.
SHAPE = LlavaShape(
    image_size=96,
    patch_size=16,
    vision_hidden=64,
    vision_layers=3,
    vision_heads=4,
    hidden=128,
    layers=12,
    heads=4,
    kv_heads=4,
    intermediate=512,
    max_positions=256,
)
WEIGHTS_DIR = TESTBED_WEIGHTS
CI_SAMPLE = {"n_scenes": 24, "n_probe": 12}  # evaluate() sizes of the recorded CI sample


@dataclass
class TrainConfig:
    """Training settings (the defaults are the shipped model's recipe)."""

    llm_steps: int = 2000  # base language model steps (text only)
    llm_batch_size: int = 32
    llm_lr: float = 1e-3
    steps: int = 6000  # instruction-tuning optimizer steps
    batch_size: int = 32
    lr: float = 7e-4  # peak AdamW learning rate of instruction tuning
    warmup: int = 100  # linear warm-up steps, then cosine decay to 5% of peak
    weight_decay: float = 0.01
    loss_per_example: bool = True  # each answer weighs the same (else each answer token does)
    describe_share: float = 0.3  # share of detailed-description examples
    ground_share: float = 0.2  # share of "describe the <category>/<colour> object." (rest: VQA)
    vision_steps: int = 800  # vision-alignment steps (0: no alignment, vision trained end to end)
    vision_batch_size: int = 64
    vision_lr: float = 1e-3
    align_embeddings: bool = True  # stage 2 also trains the word embeddings (LLaVA: frozen)
    seed: int = 1
    threads: int = 2  # torch CPU threads (results differ in the last bits across counts)


def build_tokenizer():
    """The testbed's word-level tokenizer over the world's texts and the generic lexicon."""
    return build_word_tokenizer(set(world_vocabulary()) | lexicon())


def example(
    rng: random.Random,
    describe_share: float = TrainConfig.describe_share,
    ground_share: float = TrainConfig.ground_share,
):
    """One instruction-tuning example: ``(image, instruction, answer)``."""
    scene = sample_scene(rng)
    image = render(scene)
    u = rng.random()
    if u < describe_share:
        return image, rng.choice(DESCRIBE_PROMPTS), describe(scene)
    if u < describe_share + ground_share:
        return image, *grounded_description(scene, rng)
    return image, *balanced_question(scene, rng)


def chat_text(instruction: str, answer: str) -> str:
    """A one-turn conversation in the testbed's chat format, without an image."""
    return f"USER: {instruction} ASSISTANT: {answer}</s>"


def llm_example(rng: random.Random) -> str:
    """One text of the base language model's corpus.

    30% scene descriptions and 10% grounded descriptions, 20% VQA exchanges (all in the
    chat format, about scenes the model cannot see, so it learns what scenes usually hold),
    15% paraphrased descriptions and 25% generic text.
    """
    scene = sample_scene(rng)
    u = rng.random()
    if u < 0.3:
        return chat_text(rng.choice(DESCRIBE_PROMPTS), describe(scene))
    if u < 0.4:
        return chat_text(*grounded_description(scene, rng))
    if u < 0.6:
        return chat_text(*balanced_question(scene, rng))
    if u < 0.75:
        return paraphrase(scene, rng) + "</s>"
    return generic_text(rng, rng.randint(1, 3)) + "</s>"


def train_llm(
    config: TrainConfig, shape: LlavaShape, tok, progress: bool = True, device: str = "cpu"
) -> tuple[LlamaForCausalLM, list[float]]:
    """Stage 1: the base language model, trained on :func:`llm_example` texts.

    Returns:
        The Llama decoder (LLaVA's text configuration of ``shape``) and per-step losses.
    """
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed + 1)
    model = LlamaForCausalLM(llava_config(shape, tok).text_config).to(device).train()
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id = tok.pad_token_id, tok.eos_token_id
    gen.bos_token_id = tok.bos_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=config.llm_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(config.warmup, config.llm_steps))
    tok.padding_side = "right"
    losses: list[float] = []
    bar = tqdm(range(config.llm_steps), desc="train testbed-llm", disable=not progress)
    for step in bar:
        batch = tok(
            [llm_example(rng) for _ in range(config.llm_batch_size)],
            return_tensors="pt",
            padding=True,
        ).to(device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(batch["input_ids"], batch["attention_mask"], labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    return model.eval(), losses


#: The word lists an image token is aligned with (:func:`patch_labels` rows, in order).
ALIGN_WORDS: tuple[tuple[str, ...], ...] = (
    CATEGORIES,
    tuple(COLOURS),
    tuple(SIZES),
    NUMBER_WORDS,
    tuple(PLURALS[c] for c in CATEGORIES),
)


def patch_labels(scene: Scene, side: int) -> torch.Tensor:
    """Per image token, the index (1-based, 0 = background) of its patch's words.

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
        word = [
            category,
            list(COLOURS).index(g.colour) + 1,
            list(SIZES).index(g.size) + 1,
            g.count,
            category,
        ]
        for cell in g.cells:
            cells[:, cell // GRID, cell % GRID] = torch.tensor(word)
    per = side // GRID  # image tokens per cell side
    return cells.repeat_interleave(per, 1).repeat_interleave(per, 2).flatten(1)


def align_vision(
    model, processor, config: TrainConfig, rng: random.Random, progress: bool = True
) -> list[float]:
    """Stage 2: align image tokens with the language model's words for what they show.

    Trains the CLIP tower and the projector, the language model frozen, so that each image
    token's projected feature (the decoder's input at that position) scores highest, by
    dot product with the word embeddings, on its patch's :data:`ALIGN_WORDS` (or a learned
    background score). A VQA answer then needs only to match the question's word against
    the image tokens, which plain end-to-end training on 2 CPU cores does not find.

    Returns:
        Per-step losses (sum of the five cross-entropies).
    """
    tok = processor.tokenizer
    vision, projector = model.model.vision_tower, model.model.multi_modal_projector
    embed = model.get_input_embeddings().weight
    if not config.align_embeddings:
        embed = embed.detach()
    word_ids = [torch.tensor(tok.convert_tokens_to_ids(list(w))) for w in ALIGN_WORDS]
    word_ids = [ids.to(embed.device) for ids in word_ids]
    background = torch.nn.Parameter(torch.zeros(len(ALIGN_WORDS), device=embed.device))
    params = [*vision.parameters(), *projector.parameters(), background]
    if config.align_embeddings:
        params.append(embed)
    opt = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=0.0)
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    losses: list[float] = []
    for _ in tqdm(range(config.vision_steps), desc="align vision", disable=not progress):
        scenes = [sample_scene(rng) for _ in range(config.vision_batch_size)]
        pixels = processor.image_processor([render(s) for s in scenes], return_tensors="pt")
        labels = torch.stack([patch_labels(s, side) for s in scenes]).to(embed.device)  # [B,5,P]
        pixel_values = pixels["pixel_values"].to(embed.device)
        hidden = vision(pixel_values, output_hidden_states=True).hidden_states
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


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, per_example: bool) -> torch.Tensor:
    """Next-token cross-entropy on the labelled (answer) positions.

    Args:
        logits: ``[B, T, V]`` model outputs.
        labels: ``[B, T]`` token ids, -100 where not scored.
        per_example: average within each example first, then over examples, so that a
            one-word VQA answer weighs as much as a 40-token description; if False, every
            answer token weighs the same (the model's own ``loss``).

    Returns:
        A scalar loss.
    """
    target = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), target, ignore_index=-100, reduction="none"
    )  # [B, T-1]
    mask = (target != -100).to(ce.dtype)
    if not per_example:
        return (ce * mask).sum() / mask.sum()
    per_row = (ce * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per_row[mask.sum(1) > 0].mean()


def _schedule(warmup: int, steps: int):
    """Linear warm-up, then cosine decay to 5% of the peak learning rate."""

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return lr_at


def train(
    config: TrainConfig, shape: LlavaShape = SHAPE, progress: bool = True, device: str = "cpu"
) -> tuple[torch.nn.Module, LlamaForCausalLM, object, dict[str, list[float]]]:
    """Train the base language model, then the LVLM built on it.

    Returns:
        ``(lvlm, llm, processor, losses)``, losses per stage (``"llm"``, ``"vision"``,
        ``"instruct"``), one value per step.
    """
    torch.set_num_threads(config.threads)
    tok = build_tokenizer()
    processor = llava_processor(shape, tok)
    losses: dict[str, list[float]] = {}
    llm, losses["llm"] = train_llm(config, shape, tok, progress, device)
    model = build_model(shape, tok, seed=config.seed).to(device)
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    model.train()
    rng = random.Random(config.seed)
    if config.vision_steps:
        model.model.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)
        model.get_input_embeddings().requires_grad_(config.align_embeddings)
        losses["vision"] = align_vision(model, processor, config, rng, progress)
        model.requires_grad_(True)
        model.model.vision_tower.requires_grad_(False)  # as LLaVA-1.5: vision encoder frozen
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(config.warmup, config.steps))
    losses["instruct"] = []
    bar = tqdm(range(config.steps), desc="train testbed", disable=not progress)
    for step in bar:
        batch = collate(
            processor,
            [
                example(rng, config.describe_share, config.ground_share)
                for _ in range(config.batch_size)
            ],
        )
        labels = batch.pop("labels").to(device)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        loss = answer_loss(logits, labels, config.loss_per_example)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        losses["instruct"].append(loss.item())
        if step % 20 == 0:
            recent = losses["instruct"][-20:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    return model.eval().cpu(), llm.cpu(), processor, losses


def _curve(losses: list[float]) -> dict:
    return {
        "first": round(losses[0], 4),
        "final": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "per_100_steps": [
            round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 4)
            for i in range(0, len(losses), 100)
        ],
    }


def save(model, llm, processor, out: Path) -> None:
    """Write ``lvlm/`` and ``llm/`` under ``out``, replacing old copies only when complete."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".weights.{os.getpid()}.tmp"
    model.save_pretrained(tmp / "lvlm")
    processor.save_pretrained(tmp / "lvlm")
    llm.save_pretrained(tmp / "llm")
    processor.tokenizer.save_pretrained(tmp / "llm")
    for name in ("lvlm", "llm"):
        if (out / name).exists():
            shutil.rmtree(out / name)
        (tmp / name).rename(out / name)
    tmp.rmdir()


def main(argv: list[str] | None = None) -> int:
    """Train, save and evaluate the testbed models."""
    parser = argparse.ArgumentParser(description="Train the lvlm-kit testbed models.")
    parser.add_argument("--llm-steps", type=int, default=TrainConfig.llm_steps)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--vision-steps", type=int, default=TrainConfig.vision_steps)
    parser.add_argument(
        "--align-embeddings",
        action=argparse.BooleanOptionalAction,
        default=TrainConfig.align_embeddings,
    )
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--device", default="cpu", help="cpu (the recorded recipe) or cuda")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--eval-only", action="store_true", help="re-evaluate saved models")
    args = parser.parse_args(argv)
    config = TrainConfig(
        llm_steps=args.llm_steps,
        steps=args.steps,
        vision_steps=args.vision_steps,
        align_embeddings=args.align_embeddings,
        seed=args.seed,
        threads=args.threads,
    )
    info_path = args.out / "training.json"
    if not args.eval_only:
        start = time.time()
        model, llm, processor, losses = train(config, SHAPE, device=args.device)
        save(model, llm, processor, args.out)
        info = {
            "config": config.__dict__,
            "shape": shape_dict(SHAPE),
            "vocabulary": len(processor.tokenizer),
            "priors": [p.__dict__ for p in DEFAULT_PRIORS],
            "minutes": round((time.time() - start) / 60, 1),
            "device": args.device,
            "threads": torch.get_num_threads(),
            "losses": {stage: _curve(v) for stage, v in losses.items()},
        }
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    from ..loading import load_model
    from .evaluate import evaluate

    loaded = load_model(args.out / "lvlm", dtype="float32", device_map=args.device)
    metrics = evaluate(loaded)
    # A small fixed sample that the test suite re-evaluates and compares with.
    metrics["ci_sample"] = evaluate(loaded, **CI_SAMPLE, progress=False)
    metrics["training"] = json.loads(info_path.read_text())
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
