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
# # 01 · Token probabilities across layers (paper §3, Fig. 2)
#
# **Paper claims.** (1) Every generated token's probability is near zero in the shallow layers and rises sharply around the *critical layers* (~20 of 32 in LLaVA-1.5-7B). (2) Easy tokens (punctuation, function words) settle after the critical layers, while content tokens (nouns, attributes, attribute prepositions) keep switching between candidates in deep layers.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 01_token_probabilities.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p QUANTIZATION 4bit -p DATA /path/to/AMBER`

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


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
import torch

from lvlm_kit import data, notebook, plots, trace

OUTPUT_DIR, lm = notebook.start(
    "01_token_probabilities",
    MODEL=MODEL,
    QUANTIZATION=QUANTIZATION,
    DEVICE=DEVICE,
    DTYPE=DTYPE,
    LENS_NORM=LENS_NORM,
    DATA=DATA,
    PROMPT=PROMPT,
    MAX_NEW_TOKENS=MAX_NEW_TOKENS,
    N_IMAGES=N_IMAGES,
    SEED=SEED,
    OUTPUT_DIR=OUTPUT_DIR,
)
items = data.resolve_data(DATA, OUTPUT_DIR, N_IMAGES, SEED)


# %% [markdown]
# ## 1. Trace the images

# %%
import pandas as pd
from tqdm.auto import tqdm

from lvlm_kit.stages import detect_stages, token_kind

traces = [
    trace(lm, it.image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
    for it in tqdm(items, desc="trace")
]
st = detect_stages(traces)
print(traces[0].generated_text)

# %% [markdown]
# ## 2. Fig. 2: probability of each generated token by layer

# %%
notebook.show(
    plots.token_probability_heatmap(traces[0], 24, st), OUTPUT_DIR, "fig2_token_probabilities"
)

# %% [markdown]
# ## 3. Near zero in shallow layers, a sharp rise at the critical layer

# %%
probs = torch.cat([t.token_prob for t in traces])  # [tokens, L+1]
c = st.critical_layer
shallow_p, deep_p = float(probs[:, :c].mean()), float(probs[:, c:].mean())
steepest = int((probs[:, 1:] - probs[:, :-1]).mean(0).argmax()) + 1
print(
    f"mean p(emitted) in layers 0..{c - 1}: {shallow_p:.3f}; in layers {c}..{st.n_layers}: "
    f"{deep_p:.3f}; steepest mean rise into layer {steepest}; median per-token critical "
    f"layer {st.summary()['median_token_critical']:.0f} of {st.n_layers}"
)

# %% [markdown]
# ## 4. Content tokens keep switching candidates in deep layers

# %%
kinds = [token_kind(tok) for t in traces for tok in t.tokens]
top1 = torch.cat([t.topk_ids[:, :, 0] for t in traces])  # [tokens, L+1] top-1 id per layer
switches = (top1[:, c + 1 :] != top1[:, c:-1]).sum(1).float()
by_kind = {
    k: float(switches[[i for i, x in enumerate(kinds) if x == k]].mean())
    for k in ("function", "content")
    if k in kinds
}
step = next((i for i, tok in enumerate(traces[0].tokens) if token_kind(tok) == "content"), 0)
notebook.show(plots.candidate_trajectories(traces[0], step), OUTPUT_DIR, "fig2_candidates")
print(f"top-1 switches after the critical layer, per token: {by_kind}")

# %% [markdown]
# ## 5. The claims, with 95% confidence intervals and a random-weight control
#
# Each claim becomes one statistic with a bootstrap interval over the images and a
# threshold that says in numbers what the paper says in words (`lvlm_kit.claims`). The
# same images go through a copy of the model with random weights: a statistic that holds
# there too says nothing about what the model learnt. Verdicts are *shown*, *not shown*,
# or *inconclusive* (the interval straddles the threshold).

# %%
from lvlm_kit import claims

control = claims.random_control(lm, SEED)
control_set = claims.TraceSet.of(
    [
        trace(control, it.image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
        for it in tqdm(items, desc="control")
    ]
)
model_set = claims.TraceSet(traces, st)
results = [
    claims.near_zero_shallow(model_set, control_set, claims.ClaimConfig()),
    claims.sharp_rise(model_set, control_set, claims.ClaimConfig()),
    claims.content_keeps_changing(model_set, control_set, claims.ClaimConfig()),
]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "n_tokens": int(probs.shape[0]),
        "n_layers": st.n_layers,
        "critical_layer": c,
        "mean_p_shallow": shallow_p,
        "mean_p_deep": deep_p,
        "steepest_rise_layer": steepest,
        "median_token_critical": st.summary()["median_token_critical"],
        "deep_top1_switches": by_kind,
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
