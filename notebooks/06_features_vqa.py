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
# # 06 · Answer-token features across images (paper §5, Fig. 7)
#
# **Paper claims.** For single-word VQA answers over 12 images per question, the answer token's features (t-SNE, perplexity 35) form a tight *neck* in shallow layers, fan out in deep layers (the *guitar body*), and re-cluster at the last layer. On the testbed the questions ask the colour of four objects.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 06_features_vqa.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p QUANTIZATION 4bit -p DATA /path/to/AMBER`

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
MODEL = "testbed"  # hub id (llava-hf/llava-1.5-7b-hf), local folder, or "testbed"
QUANTIZATION = None  # None, "4bit", "nf4", "fp4" or "8bit" (bitsandbytes, GPU or CPU)
DEVICE = "auto"  # "auto" (GPU if any), "cpu", "cuda", or an accelerate device map
DTYPE = "auto"  # "auto": float32 on the CPU, the checkpoint's on a GPU; or "bfloat16", ...
LENS_NORM = "final_norm"  # "final_norm" (default) or "raw" (the paper authors' code)
DATA = "testbed"  # "testbed", an AMBER folder (existence questions), or a VQA JSON list
PROMPT = "Please describe this image in detail."
MAX_NEW_TOKENS = 2
N_IMAGES = 1
SEED = 0
OUTPUT_DIR = None  # None: outputs/<notebook> in the repository, else ./outputs/<notebook>
QUESTION_OBJECTS = ["flower", "boat", "ball", "star"]  # testbed: "what colour is the X?"
IMAGES_PER_QUESTION = 12


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
from lvlm_kit import data, notebook, plots, runs

OUTPUT_DIR, lm = notebook.start("06_features_vqa", globals())


# %% [markdown]
# ## 1. Ask every question about its images
#
# The paper's §5 also projects single-word VQA answers: one question ("Is there a dog in
# the image?") asked about many images, and the hidden state of the answer token kept at
# every layer. On the testbed each of the `QUESTION_OBJECTS` is asked about in
# `IMAGES_PER_QUESTION` fresh scenes that hold it ("what colour is the boat?"; with an
# AMBER folder, AMBER's existence questions), and the first generated token is the answer.
#
# **What to look for:** the answer accuracy (the figures mean little if the model answers
# at random).

# %%
import pandas as pd

from lvlm_kit.features import (
    answer_features,
    answer_words,
    fan_profile,
    group_items,
    project,
    question_panels,
    spread_by_layer,
)

vqa = data.vqa_items(DATA, OUTPUT_DIR, QUESTION_OBJECTS, IMAGES_PER_QUESTION, SEED)
traces = runs.trace_images(
    lm,
    [v["image"] for v in vqa],
    [v["question"] for v in vqa],
    MAX_NEW_TOKENS,
    lens_norm=LENS_NORM,
    keep_hidden=True,
)
answers = answer_words(traces)
right = sum(a == v.get("answer") for a, v in zip(answers, vqa))
accuracy = right / len(vqa)
print(f"{len(vqa)} questions, {right} answers right (accuracy {accuracy:.2f})")

# %% [markdown]
# ## 2. Fig. 7: the answer token across images and layers
#
# One point per (image, layer), labelled with the answer given. The paper's Fig. 7: in the
# shallow layers the answer states of all images sit in one narrow *neck*; in deeper layers
# they fan out, and in the last layer they gather again by answer ("yes" and "no" there;
# the six colours here).
# As in the paper's Fig. 7, each question gets its own panel and its own t-SNE (the UMAP
# figure beside it pools the questions). The spread per layer (mean distance from the
# layer's centre, t-SNE units, averaged over the questions) puts the shape into numbers.
#
# **What to look for:** in each panel, the narrow first layers against the widest layer,
# and whether the last layer is tighter than the widest (re-clustering by answer).

# %%
features = answer_features(traces, step=0)  # [images, layers 1..L, d]
questions = group_items([v["question"] for v in vqa])
panels = question_panels(traces, questions, SEED)
notebook.show(
    plots.projection_panels(
        panels,
        {q: [answers[i] for i in idx] for q, idx in questions.items()},
        "answer token: images x layers, one t-SNE per question",
        model=lm.name,
    ),
    OUTPUT_DIR,
    "fig7_tsne",
)
notebook.show(
    plots.projection_plot(
        project(features, "umap", seed=SEED),
        answers,
        "answer token, all questions (UMAP)",
        model=lm.name,
    ),
    OUTPUT_DIR,
    "fig7_umap",
)
spread = pd.concat([spread_by_layer(c) for c in panels.values()], axis=1).mean(1)
fan = fan_profile(spread)
print(
    f"Spread {float(spread.loc[1]):.1f} at layer 1, widest {fan.fan:.1f} at layer "
    f"{fan.fan_layer}, {fan.last:.1f} at the last layer "
    + (
        "(drawn in: a re-clustering by answer)."
        if fan.reclusters
        else "(not drawn in: no re-clustering by answer)."
    )
)
spread

# %% [markdown]
# ## 3. The claims, with 95% confidence intervals and noise controls
#
# Each claim becomes one statistic with a bootstrap interval over the images and a
# threshold that says in numbers what the paper says in words (`lvlm_kit.claims`). The
# same images go through two noise copies of the model: one re-initialised, one with each
# weight tensor's entries permuted (the model's own weight norms, no learnt structure),
# each made to give the model's own answers (teacher forcing). As in the paper's Fig. 7,
# each question gets its own projection: the neck and the fan are measured within a
# question (deep half of the layers against the first quarter) and averaged over the
# questions. A statistic that holds on noise says nothing about what the model learnt.
# Verdicts are
# *shown* (the model beats both controls), *not shown*, *inconclusive* (an interval
# straddles the threshold) or *inconclusive (no control)* (a control has no value).

# %%
from lvlm_kit import claims
from lvlm_kit.features import coords_array

forced = claims.control_traces(
    lm,
    traces,
    [v["image"] for v in vqa],
    [v["question"] for v in vqa],
    SEED,
    lens_norm=LENS_NORM,
    keep_hidden=True,
)
per_question = {
    run: {q: coords_array(c) for q, c in question_panels(trs, questions, SEED).items()}
    for run, trs in forced.items()
}
model_xy = {q: coords_array(c) for q, c in panels.items()}
results = [claims.vqa_fan(model_xy, per_question, claims.ClaimConfig())]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "n_images": len(vqa),
        "accuracy": accuracy,
        "n_layers": traces[0].n_layers,
        "neck_spread": fan.neck,
        "fan_spread": fan.fan,
        "fan_layer": fan.fan_layer,
        "last_layer_spread": fan.last,
        "spread_by_layer": spread.round(3).tolist(),
        "last_layer_reclusters": fan.reclusters,
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
