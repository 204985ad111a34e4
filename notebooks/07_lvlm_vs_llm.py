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
# # 07 · LVLM vs its language model alone (paper §6)
#
# **Paper claim.** The same analyses on the text-only LLM show no clear hierarchy (critical split) and no mutations. LLaVA was built on Vicuna; the testbed LVLM was built the same way on its own base language model, `testbed-llm` (trained on the world's text alone, then extended with the vision tower and instruction-tuned), and `LLM_MODEL="auto"` picks the base model of `MODEL` (the testbed's `testbed-llm`, LLaVA-1.5-7B's Vicuna-7B v1.5, or stops with the fix for a model it does not know); `-p LLM_MODEL None` runs the LVLM's own decoder without an image.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 07_lvlm_vs_llm.ipynb out.ipynb -p MODEL llava-1.5-7b -p QUANTIZATION 4bit -p DATA /path/to/AMBER` (the base LLM, Vicuna-7B v1.5, follows from `MODEL`)

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
LLM_MODEL = "auto"  # "auto": MODEL's base LLM; or an id / folder; None: the LVLM, no image
LLM_PROMPTS = [
    "describe this image.",
    "please describe this image in detail.",
    "what colour is the boat?",
    "is there a fish in this image?",
    "how many trees are there?",
    "what colour is the ball?",
    "describe the boat.",
    "is there a house in this image?",
]


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
from lvlm_kit import data, notebook, plots, runs

OUTPUT_DIR, lm = notebook.start("07_lvlm_vs_llm", globals())
LLM_MODEL = notebook.llm_model(MODEL, LLM_MODEL)
print(f"base LLM: {LLM_MODEL or 'the LVLM itself, without an image'}")
items = data.resolve_data(DATA, OUTPUT_DIR, N_IMAGES, SEED)


# %% [markdown]
# ## 1. Trace the LVLM on images and the LLM on text
#
# The paper's §6 compares LLaVA-1.5 with the language model it was built on (Vicuna):
# the LLM, asked to write text, shows the rapid-evolution and stabilisation stages but no
# clear deep-layer mutation, which the paper ties to the visual input. Here the LVLM
# describes the images, and `LLM_MODEL` (on the testbed, `testbed-llm`, the base model the
# testbed LVLM was trained from) continues the `LLM_PROMPTS`, text only. Both are traced
# and their stages detected the same way.
#
# **What to look for:** in the table, `tokens_with_mutation` of the two models, and their
# critical layers.

# %%
import pandas as pd
from lvlm_kit.stages import detect_stages

lvlm_traces = runs.trace_images(
    lm, [it.image for it in items], PROMPT, MAX_NEW_TOKENS, desc="LVLM", lens_norm=LENS_NORM
)
llm = lm if LLM_MODEL is None else notebook.load(LLM_MODEL, QUANTIZATION, DEVICE, DTYPE)
llm_traces = runs.trace_images(
    llm, [None] * len(LLM_PROMPTS), LLM_PROMPTS, MAX_NEW_TOKENS, desc="LLM", lens_norm=LENS_NORM
)
st_lvlm, st_llm = detect_stages(lvlm_traces), detect_stages(llm_traces)
pd.DataFrame({"LVLM": st_lvlm.summary(), "LLM": st_llm.summary()})

# %% [markdown]
# ## 2. Adjacent-layer JS of both
#
# The two mean adjacent-layer JS curves on one axis (the LVLM's with its 95% band).
#
# **What to look for:** both curves falling after their shallow layers, and a deep-layer
# rise in the LVLM's curve that the LLM's lacks.

# %%
notebook.show(
    plots.js_curve(
        st_lvlm, {"LLM alone (text)": llm_traces}, traces=lvlm_traces, label="LVLM (with images)"
    ),
    OUTPUT_DIR,
    "js_lvlm_vs_llm",
)

# %% [markdown]
# The two models side by side, in numbers from this run: the share of tokens with a deep
# mutation (a JS event) and the shallow / deep JS ratio (a larger ratio is a sharper split
# between rapid evolution and stabilisation).

# %%
for name, s in (("LVLM", st_lvlm), ("LLM alone", st_llm)):
    print(
        f"{name}: {s.summary()['tokens_with_mutation']:.0%} of tokens mutate in deep layers; "
        f"shallow / deep JS {s.split_ratio:.2g}; critical layer "
        f"{s.critical_layer} of {s.n_layers}"
    )

# %% [markdown]
# **How to read it.** The paper's contrast is an LVLM that mutates more than its LLM; claim
# 14 below puts an interval on the difference and measures it on noise copies of both models.
#
# ## 3. The claims, with 95% confidence intervals and noise controls
#
# Each claim becomes one statistic with a bootstrap interval over the images and the LLM's prompts and a
# threshold that says in numbers what the paper says in words (`lvlm_kit.claims`). The
# same images go through two noise copies of each model (the LVLM's and the LLM's get the
# same kinds): one re-initialised, one with each weight tensor's entries permuted (the
# model's own weight norms, no learnt structure), each made to emit its model's own words
# (teacher forcing). A statistic that holds on noise says nothing about what the model
# learnt. Mutations are counted on half of the images and prompts, at the critical layer
# detected on the other half. Verdicts are
# *shown* (the model beats both controls), *not shown*, *inconclusive* (an interval
# straddles the threshold) or *inconclusive (no control)* (a control has no value).

# %%
from lvlm_kit import claims

lvlm_forced = claims.control_traces(
    lm, lvlm_traces, [it.image for it in items], PROMPT, SEED, lens_norm=LENS_NORM
)
llm_forced = claims.control_traces(
    lm if LLM_MODEL is None else llm,
    llm_traces,
    [None] * len(llm_traces),
    LLM_PROMPTS,
    SEED,
    lens_norm=LENS_NORM,
)
control_pairs = {
    name: (claims.TraceSet.of(lvlm_forced[name]), claims.TraceSet.of(llm_forced[name]))
    for name in lvlm_forced
}
model_pair = (claims.TraceSet.of(lvlm_traces), claims.TraceSet.of(llm_traces))
results = [claims.llm_fewer_mutations(model_pair, control_pairs, claims.ClaimConfig())]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "lvlm": st_lvlm.summary(),
        "llm": st_llm.summary(),
        "split_ratio": {"lvlm": st_lvlm.split_ratio, "llm": st_llm.split_ratio},
        "tokens_with_mutation": {
            "lvlm": st_lvlm.summary()["tokens_with_mutation"],
            "llm": st_llm.summary()["tokens_with_mutation"],
        },
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
