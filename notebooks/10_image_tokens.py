# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · The lens on the image tokens: which patch decodes to which object, at which layer
#
# **Not in the paper.** The paper decodes the generated tokens only. Here the same lens reads the *image* tokens of the prompt, layer by layer: does the patch that shows a boat decode to "boat", and from which layer? Real images have no per-patch truth; the testbed does: each of its image tokens covers one cell of its square grid, and every scene knows what is drawn in each cell. The kit's own claim 21 puts the answer against noise copies of the model. A second question: does a planted-prior hallucination (a fish added to scenes with a boat during training) already show in the image tokens around the boat?
#
# Runs on the testbed only (`DATA` must be "testbed": per-cell truth); the lens itself (`lvlm_kit.image_lens.image_token_lens`) runs on every image-text family.

# %%
# Setup. In a checkout, `make reproduce` / `make test` install the kit. Anywhere else (Colab,
# a fresh kernel) this cell installs it with pip when it is not importable, from KIT: a
# folder of the repository, a built wheel, or a git URL such as
# "lvlm-kit @ git+https://<host>/<owner>/lvlm-kit.git". The install is a regular one into
# site-packages, which is already on the kernel's path: no restart is needed.
import importlib
import importlib.util
import subprocess
import sys

KIT = "/content/lvlm-kit"
if importlib.util.find_spec("lvlm_kit") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", KIT], check=True)
    importlib.invalidate_caches()


# %% tags=["parameters"]
MODEL = "testbed"  # the testbed (per-cell truth exists for its scenes only)
QUANTIZATION = None  # None, "4bit", "nf4", "fp4" or "8bit" (bitsandbytes, GPU or CPU)
DEVICE = "auto"  # "auto" (GPU if any), "cpu", "cuda", or an accelerate device map
DTYPE = "auto"  # "auto": float32 on the CPU, the checkpoint's on a GPU; or "bfloat16", ...
LENS_NORM = "final_norm"  # "final_norm" (default) or "raw" (the paper authors' code)
DATA = "testbed"  # "testbed": held-out scenes with their cells' truth
PROMPT = "Please describe this image in detail."
MAX_NEW_TOKENS = 48
N_IMAGES = 24
SEED = 0
OUTPUT_DIR = None  # None: outputs/<notebook> in the repository, else ./outputs/<notebook>
N_PROBE_IMAGES = 24  # probe scenes (a prior's A without its B) for the planted-prior question


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
import numpy as np

from lvlm_kit import claims, data, notebook, plots, runs

OUTPUT_DIR, lm = notebook.start("10_image_tokens", globals())
amber = data.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)
cells = data.cell_truth(amber)  # per image, per cell: (category, colour) or None

# %% [markdown]
# ## 1. Decode every image token at every layer
#
# One forward pass per image (no generation): the residual stream at each image position
# is decoded with the model's own final norm and head in float32, as the
# generated tokens are in the other notebooks. Kept per (layer, patch): the probability of
# every category word and every colour word, and the top candidates. The same is
# done on the two noise copies of the model (re-initialised, and permuted inside each
# weight tensor).
#
# **What to look for:** the printed top candidates of one occupied patch at a few layers.

# %%
from tqdm.auto import tqdm

from lvlm_kit.image_lens import cell_accuracy, image_token_lens, prior_probe
from lvlm_kit.testbed.world import CATEGORIES, COLOURS, GRID

words = [*CATEGORIES, *COLOURS]
images = [amber.image_path(q) for q in amber.queries]
models = {"model": lm, **claims.controls(lm, SEED)}
lenses = {
    name: [
        image_token_lens(m, im, PROMPT, words=words, lens_norm=LENS_NORM)
        for im in tqdm(images, desc=name)
    ]
    for name, m in models.items()
}
first = lenses["model"][0]
cell = next(i for i, c in enumerate(cells[0]) if c is not None)
for j in (0, first.n_layers // 2, first.n_layers):
    top = [lm.tokenizer.decode([int(i)]) for i in first.topk_ids[j, cell]]
    print(f"layer {j}, cell {cell} ({' '.join(cells[0][cell])}): top candidates {top}")

# %% [markdown]
# ## 2. Patch accuracy by layer, against the noise copies
#
# For every occupied cell, is the most probable of the category words the object drawn
# there? And of the colour words, its colour? The share of a picture's occupied cells that
# decode right, per layer, averaged over the images (band: 95% bootstrap interval over
# images), for the model and its noise copies, with chance (one over the number of
# candidate words) as a line.
#
# **What to look for:** a layer from which the model's category accuracy rises above
# chance and above both copies.

# %%
candidates = {"category": CATEGORIES, "colour": COLOURS}  # the order of a cell's truth
accuracy = {name: cell_accuracy(ls, cells, candidates) for name, ls in lenses.items()}
chance = {kind: acc.chance for kind, acc in accuracy["model"].items()}
for kind in candidates:
    notebook.show(
        plots.layer_lines(
            {name: acc[kind].accuracy for name, acc in accuracy.items()},
            f"{kind} accuracy",
            f"image tokens decoding to their cell's {kind}",
            model=lm.name,
            lens=LENS_NORM,
            references={"chance": chance[kind]},
        ),
        OUTPUT_DIR,
        f"patch_{kind}_accuracy",
    )
category = {name: acc["category"] for name, acc in accuracy.items()}
best = category["model"].best_layer
print(
    f"category accuracy: best layer {best} of {first.n_layers}, "
    f"{category['model'].mean[best]:.3f} (chance {chance['category']:.3f}; re-initialised "
    f"{category['re-initialised'].mean[best]:.3f}, permuted "
    f"{category['permuted'].mean[best]:.3f} at that layer)"
)

# %% [markdown]
# ## 3. Where the objects become decodable, beside the critical layer of the words
#
# The critical layer of the generated tokens (notebook 01) on the same images, against the
# first layer whose category accuracy has its whole 95% interval above chance.
#
# **What to look for:** whether the image tokens carry their objects before, at or after
# the layers where the description's words settle.

# %%
from lvlm_kit.stages import detect_stages

traces = runs.trace_images(lm, images, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
critical = detect_stages(traces).critical_layer
rng = np.random.default_rng(SEED)  # one stream for this band and the prior's below
decodable = category["model"].first_layer_above_chance(rng)
print(
    f"critical layer of the generated tokens: {critical} of {first.n_layers}; first layer "
    "whose category accuracy is above chance: "
    + (f"{decodable}" if decodable is not None else "none (at no layer)")
)

# %% [markdown]
# ## 4. One scene, patch by patch
#
# The probability of the true category word at each patch, at the best layer
# found above, beside the image; each cell is labelled with what is drawn there. Below, an
# ipywidgets view picks the layer and the word (in a headless run it shows its first state).
#
# **What to look for:** bright cells where the objects are.

# %%
from PIL import Image

from lvlm_kit.widgets import PatchExplorer

scene_image = Image.open(images[0]).convert("RGB")
labels = np.array([c[0] if c else "" for c in cells[0]]).reshape(GRID, GRID)
true_prob = first.true_word_prob(best, [c[0] if c else None for c in cells[0]])
notebook.show(
    plots.patch_heatmap(
        scene_image,
        first.as_grid(true_prob).numpy(),
        f"p(true category word) at layer {best}",
        model=lm.name,
        labels=labels,
    ),
    OUTPUT_DIR,
    "patch_heatmap",
)
PatchExplorer(first, scene_image, labels).widget

# %% [markdown]
# ## 5. Does a planted-prior hallucination start in the image tokens?
#
# The testbed was trained with a prior: scenes with a boat usually also hold a fish. On
# probe scenes that hold the boat but no fish, the probability of "fish" in the patches next
# to the boat is set against the other patches of the same scenes, and against probe scenes
# without a boat (the other prior: a tree without a house), layer by layer, with 95%
# intervals over images.
#
# **What to look for:** whether "fish" is more probable next to the boat than elsewhere,
# and at which layers; the printed differences say it either way.

# %%
probe = data.resolve_amber("testbed-probe", OUTPUT_DIR, N_PROBE_IMAGES, SEED)
probe_cells = data.cell_truth(probe)
probe_lenses = [
    image_token_lens(lm, probe.image_path(q), PROMPT, words=words, lens_norm=LENS_NORM)
    for q in tqdm(probe.queries, desc="probe")
]
prior = prior_probe(probe_lenses, probe_cells, anchor="boat", word="fish")
notebook.show(
    plots.layer_lines(
        {
            "next to the boat": prior.near,
            "elsewhere (boat scenes)": prior.elsewhere,
            "scenes without a boat": prior.without,
        },
        "p('fish')",
        "planted prior: 'fish' in the image tokens of boat scenes without a fish",
        log=True,
        model=lm.name,
        lens=LENS_NORM,
    ),
    OUTPUT_DIR,
    "prior_fish",
)
higher, d_low, d_high = prior.layers_higher_near(rng)
last = float((prior.near - prior.elsewhere)[:, -1].mean())
print(
    f"{len(prior.near)} boat scenes, {len(prior.without)} without: p('fish') next to the boat "
    f"minus elsewhere is above zero (95% interval) at layers {higher or 'none'}; at the last "
    f"layer {last:.2e} [{d_low[-1]:.2e}, {d_high[-1]:.2e}]"
)

# %% [markdown]
# ## 6. The kit's claim, with a 95% confidence interval and noise controls
#
# Claim 21: the patches decode to their objects above chance, at the layer where the model
# does best (chosen on half of the images, measured on the other half), against the same
# analysis on the noise copies. Verdicts are *shown* (the model beats both copies), *not
# shown*, *inconclusive* (an interval straddles the threshold) or *inconclusive (no
# control)*.

# %%
results = [
    claims.image_tokens_decode(
        category["model"],
        {name: acc for name, acc in category.items() if name != "model"},
        claims.ClaimConfig(),
    )
]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "n_images": len(images),
        "n_layers": first.n_layers,
        "best_layer": best,
        "category_accuracy_by_layer": np.round(category["model"].mean, 4).tolist(),
        "colour_accuracy_by_layer": np.round(accuracy["model"]["colour"].mean, 4).tolist(),
        "critical_layer": critical,
        "first_decodable_layer": decodable,
        "prior_fish_near_minus_elsewhere_last": last,
        "prior_layers_higher_near_boat": higher,
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
