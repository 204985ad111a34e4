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
# # 03 · JS divergence between adjacent layers: three stages (paper §4, Fig. 4)
#
# **Paper claims.** (1) Adjacent-layer JS divergence is large in shallow layers (rapid evolution) and small in deep layers (stabilisation), split around a critical layer. (2) For key entity tokens it *mutates* again in deep layers. Hence three stages: rapid evolution → stabilisation → mutation. JS here is the true JSD (nats, ≤ ln 2); the DoLa-code variant the paper's figures used is compared at the end.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 03_js_divergence.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p QUANTIZATION 4bit -p DATA /path/to/AMBER`

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
    "03_js_divergence",
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
    trace(lm, it.image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM, dola_compat=True)
    for it in tqdm(items, desc="trace")
]
st = detect_stages(traces)
pd.Series(st.summary())

# %% [markdown]
# ## 2. Fig. 4: JS divergence of adjacent layers per token, and the stages

# %%
notebook.show(plots.js_heatmap(traces[0]), OUTPUT_DIR, "fig4_js_heatmap")
notebook.show(plots.js_curve(st, traces=traces), OUTPUT_DIR, "fig4_js_stages")

# %% [markdown]
# ## 3. Key entities mutate in deep layers more than other tokens

# %%
kinds = [token_kind(tok) for t in traces for tok in t.tokens]
mutating = [bool(m) for m in st.token_mutations]
mutation_share = {
    k: sum(m for m, x in zip(mutating, kinds) if x == k) / max(kinds.count(k), 1)
    for k in ("function", "content")
}
print(f"share of tokens with a deep-layer mutation: {mutation_share}")

# %% [markdown]
# ## 4. The DoLa-code JS variant against true JSD / V

# %%
js = torch.cat([t.js for t in traces]).double()
dola = torch.cat([t.js_dola for t in traces])
ratio = float((dola * traces[0].meta["vocab_size"] / js.clamp_min(1e-12)).median())
print(f"median of js_dola / (JSD / V): {ratio:.3f} (1 would mean the two agree)")

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
    claims.js_split(model_set, control_set, claims.ClaimConfig()),
    claims.entities_rise_again(model_set, control_set, claims.ClaimConfig()),
    claims.three_stages(model_set, control_set, claims.ClaimConfig()),
]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
split_ratio = st.shallow_js / max(st.deep_js, 1e-12)
metrics = notebook.record(
    {
        **st.summary(),
        "split_ratio": split_ratio,
        "mutation_share_by_kind": mutation_share,
        "dola_over_jsd_per_v_median": ratio,
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
