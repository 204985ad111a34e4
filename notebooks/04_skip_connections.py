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
# # 04 · Skip connections during generation (paper §4, Fig. 5)
#
# **Paper claims.** skip.1 (jump from the critical layers to the mutation layers, dropping the stable middle) keeps the output almost unchanged, hallucinations included; skip.2 (skip only the mutation layers) keeps the description and corrects some hallucinations; skip.3 (jump from the critical layers to the last few layers) is similar but hallucinates more. Layer lists are derived from detected stages.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 04_skip_connections.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p QUANTIZATION 4bit -p DATA /path/to/AMBER`

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
DATA = "testbed-probe"  # planted-prior probe scenes (testbed), or an AMBER-layout folder
PROMPT = "Please describe this image in detail."
MAX_NEW_TOKENS = 48
N_IMAGES = 24
SEED = 0
OUTPUT_DIR = None  # None: outputs/<notebook> in the repository, else ./outputs/<notebook>

# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
import math


from lvlm_kit import data, notebook, plots

OUTPUT_DIR, lm = notebook.start("04_skip_connections", globals())

# %% [markdown]
# ## 1. Detect the stages on half of the images
#
# The skip presets are defined by the stages, so they are detected first, from plain
# traces of the images at even positions (notebook 03 explains the detection); the presets
# are then judged on the other images, so that no image both chooses the layers and scores
# them. `claims.preset_layers` turns the stages into lists of decoder layers to remove from
# the forward pass: skip.1 drops the stabilisation stage (critical layer to the first
# mutation layer), skip.2 only the mutation layers, skip.3 everything from the critical
# layer to the last few layers. Beside each preset it draws random sets of as many layers
# after the critical layer: if those do the same, it is the number of layers skipped, not
# which, that matters. Skipping happens inside `generate` with the KV cache intact
# (`lvlm_kit.surgery`).
#
# **What to look for:** the printed critical and mutation layers and the layers each
# preset skips (a preset the stages cannot define is missing from the list).

# %%
import dataclasses

import pandas as pd

from lvlm_kit import claims, runs
from lvlm_kit.stages import detect_stages

config = claims.ClaimConfig()
amber = data.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)
images = [amber.image_path(q) for q in amber.queries]
traces = runs.trace_images(lm, images, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
st = detect_stages(traces[0::2])
presets = claims.preset_layers(st, config, SEED)
judged = dataclasses.replace(amber, queries=amber.queries[1::2])
print(
    f"critical layer {st.critical_layer}, mutation layers {st.mutation_layers} (from "
    f"{len(traces[0::2])} images; {len(judged.queries)} images judged); skipped decoder "
    f"layers: { {k: v[0] for k, v in presets.items() if not k.startswith('random.')} }"
)

# %% [markdown]
# ## 2. Generate with each skip preset, and count what each keeps and hallucinates
#
# For every judged image: the nouns of each description that AMBER's scorer keeps, those
# that are hallucinated, the annotated objects it names (for Cover), and the word overlap
# with plain decoding. The images are probe scenes with a planted prior's A and without its
# B, where the testbed tends to hallucinate B.
#
# **What to look for:** the first three descriptions of each preset side by side: which
# presets still describe the scene, and which start naming things that are not there.

# %%
plain = [t.generated_text for t in traces[1::2]]
counts, texts = runs.preset_counts(lm, judged, plain, presets, PROMPT, MAX_NEW_TOKENS)
pd.DataFrame({name: t[:3] for name, t in texts.items() if not name.startswith("random.")})

# %% [markdown]
# ## 3. Fig. 5: what each preset keeps and what it hallucinates
#
# The paper's Fig. 5 shows one image's description under each preset: skip.1 nearly
# unchanged (its hallucination included), skip.2 unchanged except that the hallucinated
# object is gone, skip.3 with more hallucination. Here the same comparison is counted over
# the judged images: CHAIR, Cover and Hal of each preset, its word overlap with plain
# decoding, and the same for random sets of as many layers (`random.skip1`, ...).
#
# **What to look for:** skip.1's overlap with plain decoding (the paper: almost 1), skip.2's
# CHAIR against plain's (the paper: lower, with Cover kept), skip.3's CHAIR against plain's
# (the paper: higher), each against its random sets.

# %%
table = counts.table(presets)
first = {name: t[0] for name, t in texts.items() if not name.startswith("random.")}
notebook.show(
    plots.decoding_bars(table, model=lm.name, texts=first), OUTPUT_DIR, "fig5_skip_presets"
)
chair = {name: row["chair"] for name, row in table.items()}
overlap = {name: row["overlap_with_plain"] for name, row in table.items()}
for name in [n for n in ("skip1", "skip2", "skip3") if n in table]:
    print(
        f"{name} (decoder layers {table[name]['skipped']} skipped): word overlap with plain "
        f"{overlap[name]:.2f} (random sets of as many layers: "
        f"{overlap.get('random.' + name, math.nan):.2f}); CHAIR {chair[name]:.2f} against "
        f"plain {chair['plain']:.2f} (random sets: {chair.get('random.' + name, math.nan):.2f})"
    )
pd.DataFrame(table).T

# %% [markdown]
# ## 4. The claims, with 95% confidence intervals and noise controls
#
# Each claim becomes one statistic with a bootstrap interval over the images and a
# threshold that says in numbers what the paper says in words (`lvlm_kit.claims`). The
# same images go through two noise copies of the model: one re-initialised, one with each
# weight tensor's entries permuted (the model's own weight norms, no learnt structure);
# they skip the model's layers. A third control is the model itself with the random sets
# of as many layers skipped. A statistic that holds on a control says nothing about the
# layers the stages chose. Verdicts are
# *shown* (the model beats both controls), *not shown*, *inconclusive* (an interval
# straddles the threshold) or *inconclusive (no control)* (a control has no value).

# %%
from lvlm_kit.generation import generate_texts

judged_images = [judged.image_path(q) for q in judged.queries]
control_counts = {}
for name, control in claims.controls(lm, SEED).items():
    control_plain = generate_texts(
        control, judged_images, [PROMPT] * len(judged_images), MAX_NEW_TOKENS, desc=name
    )
    control_counts[name], _ = runs.preset_counts(
        control, judged, control_plain, presets, PROMPT, MAX_NEW_TOKENS
    )
results = [
    claims.skip1_keeps(counts, control_counts, config),
    claims.skip2_fewer(counts, control_counts, config),
    claims.skip3_more(counts, control_counts, config),
]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "critical_layer": st.critical_layer,
        "mutation_layers": st.mutation_layers,
        "presets": table,
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
