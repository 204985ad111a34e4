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
# # 08 · Applications: compression and hallucination mitigation (paper §6)
#
# **Paper claims.** Stable layers can be skipped to compress the model; handling the mutation layers can reduce hallucinations. Measured here with the AMBER scorer on held-out images: quality and speed vs stable layers skipped, and plain decoding vs skip.2, a DoLa-style layer contrast, and an anchor to the last pre-mutation layer.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 08_applications.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p QUANTIZATION 4bit -p DATA /path/to/AMBER`

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
DATA = "testbed"  # "testbed", an AMBER-layout folder, or a folder of images
PROMPT = "Please describe this image in detail."
MAX_NEW_TOKENS = 48
N_IMAGES = 24
SEED = 0
OUTPUT_DIR = None  # None: outputs/<notebook> in the repository, else ./outputs/<notebook>
N_STAGE_IMAGES = 8  # images used to detect the stages
SKIP_KS = [1, 2, 3]


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
import math


from lvlm_kit import data, notebook, plots, runs

OUTPUT_DIR, lm = notebook.start("08_applications", globals())


# %% [markdown]
# ## 1. Detect the stages
#
# The paper's §6 proposes two uses of the stages: compress the model by skipping layers of
# the stabilisation stage, where the distribution hardly changes, and reduce hallucination
# by acting on the mutation layers, where hallucinated objects jump ahead. Both need the
# stages, detected here from plain traces of the first `N_STAGE_IMAGES` images.
#
# **What to look for:** the critical and mutation layers that the next two sections use.

# %%
import pandas as pd
from lvlm_kit.stages import detect_stages

from lvlm_kit.applications import (
    compare_decoding,
    compression_sweep,
    decoding_table,
    stable_layers_by_js,
    sweep_table,
)

amber = data.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)
questions = data.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED, queries="discriminative")
stage_images, judged, judged_questions = data.hold_out(amber, questions, N_STAGE_IMAGES)
stage_traces = runs.trace_images(lm, stage_images, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
st = detect_stages(stage_traces)
print(
    f"critical layer {st.critical_layer}, mutation layers {st.mutation_layers}; the other "
    f"{len(judged.queries)} images are judged"
)

# %% [markdown]
# ## 2. Compression: skip the most stable layers
#
# For k = 0, 1, 2, ... the k layers of the stabilisation stage with the smallest mean
# adjacent-layer JS are removed from the forward pass, and the model describes the images
# and answers AMBER-style existence questions: object precision and recall, CHAIR, existence
# accuracy and tokens per second against the ideal speed-up L / (L - k). The stabilisation
# stage bounds how many layers can be skipped: when the detected stages leave fewer stable
# layers than `SKIP_KS` asks for, the sweep stops at what there is.
#
# **What to look for:** how many layers can go before the quality measures fall (the
# paper: little accuracy lost).

# %%
from lvlm_kit import claims

config = claims.ClaimConfig()
claim_k = claims.compression_k(st.n_layers, config)
n_stable = len(stable_layers_by_js(st))
ks = [k for k in sorted({*SKIP_KS, claim_k}) if k <= n_stable]
if ks != sorted({*SKIP_KS, claim_k}):
    print(f"The stages leave {n_stable} stable layers to skip: k = {ks} of {SKIP_KS} + {claim_k}.")
points = compression_sweep(lm, judged, st, ks, judged_questions, MAX_NEW_TOKENS)
notebook.show(plots.sweep_plot(points, model=lm.name), OUTPUT_DIR, "compression_sweep")
sweep = sweep_table(points)
base = points[0]
for p in points[1:]:
    print(
        f"k = {p.k}: object recall {base.object_recall:.2f} -> {p.object_recall:.2f}, "
        f"existence accuracy {base.existence_accuracy or math.nan:.2f} -> "
        f"{p.existence_accuracy or math.nan:.2f}, speed-up {p.speedup:.2f} (ideal "
        f"{p.ideal_speedup:.2f})"
    )
print(f"The detected stabilisation stage holds {n_stable} of the {st.n_layers} layers.")
pd.DataFrame(sweep)

# %% [markdown]
# ## 3. Hallucination mitigation: mutation layers and a DoLa-style baseline
#
# Four ways to decode the same images: plain greedy; skip2 (the mutation layers removed);
# a DoLa-style contrast of the last layer against a premature layer; and an anchor that
# adds the last pre-mutation layer's log-probabilities to the last layer's (DeCo-like).
# Each is scored with CHAIR, Hal, Cover and Cog.
#
# **What to look for:** whether any variant lowers CHAIR without lowering Cover (fewer
# hallucinated objects without naming fewer real ones).

# %%
decoding = compare_decoding(lm, amber, st, MAX_NEW_TOKENS)
notebook.show(plots.decoding_bars(decoding, model=lm.name), OUTPUT_DIR, "decoding_variants")
table = decoding_table(decoding)
pd.DataFrame(table).T

# %% [markdown]
# Each variant against plain decoding, in numbers from this run (CHAIR pooled over the
# images: hallucinated nouns / kept nouns).

# %%
for k, r in decoding.items():
    if k != "plain":
        print(
            f"{k}: CHAIR {decoding['plain']['chair']:.3f} -> {r['chair']:.3f}, "
            f"Cover {decoding['plain']['cover']:.3f} -> {r['cover']:.3f}"
        )

# %% [markdown]
# **How to read it.** A method helps when CHAIR falls and Cover does not. Where plain
# decoding hallucinates nothing on these scenes, a method can only show what it costs; the
# hallucination-prone probe scenes are notebook 04's.
#
# ## 4. The claims, with 95% confidence intervals and noise controls
#
# Each claim becomes one statistic with a bootstrap interval over the images and a
# threshold that says in numbers what the paper says in words (`lvlm_kit.claims`). The
# same images go through two noise copies of the model: one re-initialised, one with each
# weight tensor's entries permuted (the model's own weight norms, no learnt structure),
# skipping the model's most stable layers. The claim skips a quarter of the layers
# (`ClaimConfig.compression_depth`), whatever `SKIP_KS` the sweep above draws, and is judged
# on images the stages were not detected on. A statistic that holds on noise says nothing
# about what the model learnt. Verdicts are
# *shown* (the model beats both controls), *not shown*, *inconclusive* (an interval
# straddles the threshold) or *inconclusive (no control)* (a control has no value).

# %%
control_answers = {}
for name, control in claims.controls(lm, SEED).items():
    control_points = compression_sweep(
        control, judged, st, [k for k in ks if k == claim_k], judged_questions, MAX_NEW_TOKENS
    )
    control_answers[name] = claims.sweep_answers(control_points, claim_k)
results = [
    claims.compression(
        claims.sweep_answers(points, claim_k), control_answers, config, n_layers=st.n_layers
    )
]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
best = min(table, key=lambda k: table[k]["chair"])
metrics = notebook.record(
    {
        "critical_layer": st.critical_layer,
        "mutation_layers": st.mutation_layers,
        "sweep": sweep,
        "decoding": table,
        "lowest_chair": best,
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
for p in points[1:]:
    print(
        f"skip {p.k} stable layers: precision {p.object_precision:.2f}, recall {p.object_recall:.2f}"
        f" (k=0: {points[0].object_precision:.2f}, {points[0].object_recall:.2f}); speed-up "
        f"{p.speedup:.2f}x (ideal {p.ideal_speedup:.2f}x)"
    )
print(
    f"Lowest CHAIR: {best} ({table[best]['chair']:.3f}) vs plain {table['plain']['chair']:.3f}, "
    f"Cover {table[best]['cover']:.2f} vs {table['plain']['cover']:.2f}."
)
metrics
