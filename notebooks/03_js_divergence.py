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

from lvlm_kit import claims, data, notebook, plots, runs, stages

OUTPUT_DIR, lm = notebook.start("03_js_divergence", globals())
items = data.resolve_data(DATA, OUTPUT_DIR, N_IMAGES, SEED)


# %% [markdown]
# ## 1. Trace the images
#
# One greedy description per image, decoded at every layer with the float32 lens (see
# notebook 01). For every generated token, `trace` keeps the Jensen-Shannon divergence
# between the lens distributions of each pair of adjacent layers, computed from
# log-probabilities (so it stays within [0, ln 2] nats), and, with `dola_compat=True`, the
# variant computed by the code the paper's authors reused (section 4 below).
# `detect_stages` averages the JS curve over all tokens and images and finds the *critical
# layer* (the split between a high shallow level and a low deep level) and the *mutation
# layers* (deep layers where many tokens' JS rises again).
#
# **What to look for:** the table of stage statistics: `critical_layer`, `mutation_layers`,
# `shallow_js` against `deep_js`, and the share of tokens with a deep mutation.

# %%
import pandas as pd

from lvlm_kit.stages import detect_stages

traces = runs.trace_images(
    lm, [it.image for it in items], PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM, dola_compat=True
)
st = detect_stages(traces)
pd.Series(st.summary())

# %% [markdown]
# ## 2. Fig. 4: JS divergence of adjacent layers per token, and the stages
#
# The paper's Fig. 4 draws, for each generated token, the JS divergence between layer j
# and layer j + 1. In LLaVA-1.5-7B it is large in the first ~20 layers (*rapid
# evolution*: the distribution changes a lot from layer to layer), small after them
# (*stabilisation*), and for some tokens, mostly object words, it rises again in the last
# few layers (*mutation*). The first figure is the heatmap for the first image (rows:
# tokens, columns: layer pairs); the second is the mean curve over all tokens with a 95%
# band, the critical layer and the mutation layers marked.
#
# **What to look for:** a bright left part and a dark right part in the heatmap, a curve
# that falls at the critical layer, and bright spots or a bump in the last layers.

# %%
notebook.show(plots.js_heatmap(traces[0], stages=st), OUTPUT_DIR, "fig4_js_heatmap")
notebook.show(plots.js_curve(st, traces=traces), OUTPUT_DIR, "fig4_js_stages")

# %% [markdown]
# The detected stages in numbers from this run: where the curve drops, where JS events
# concentrate, and how far apart the shallow and deep levels are. Claim 6 asks more than a
# gap: that a step (a high shallow level, a low deep level) explains the curve better than a
# smooth decay, which a model whose layers each change the stream a little less would show.

# %%
print(
    f"critical layer {st.critical_layer} of {st.n_layers} (relative depth "
    f"{st.critical_layer / st.n_layers:.2f}); mutation layers {st.mutation_layers or 'none'}; "
    f"shallow / deep mean JS {st.split_ratio:.2f}"
)
curve = stages.js_after_embedding(traces).numpy()
print(
    f"step over log-linear fit (embedding step left out): ΔBIC {claims.step_bic(curve):.1f} "
    f"(claim 6 needs at least {claims.ClaimConfig().step_bic:g})"
)
#
# ## 3. Key entities mutate in deep layers more than other tokens
#
# The paper finds the deep-layer mutation mostly in key entities (objects and their
# attributes). Here every generated token is classed as a content or a function token and
# the share of each class with at least one deep mutation is printed.
#
# **What to look for:** a higher share for content tokens than for function tokens.

# %%
mutation_share = stages.share_by_kind(traces, st.token_mutations)
rise_share = stages.share_by_kind(traces, st.token_rises)
print(
    "share of tokens with a deep-layer mutation (a JS event): "
    + ", ".join(f"{k} {v:.2f}" for k, v in mutation_share.items())
    + "\nshare with a late rise of p(emitted) by at least "
    + f"{st.config.min_jump:g} (no mutation by itself): "
    + ", ".join(f"{k} {v:.2f}" for k, v in rise_share.items())
)

# %% [markdown]
# **How to read it.** A *mutation* counts only where the distribution changes abruptly again
# in a deep layer (a JS event); a late climb of the emitted token's probability is the
# confidence rise after the critical layer that every token shows, so it is printed apart.
# The paper's pattern is a higher mutation share for content tokens than for function
# tokens; claim 7 below puts an interval on that difference and sets it against the noise
# controls.
#
# ## 4. The DoLa-code JS variant against true JSD / V
#
# The authors computed "JS divergence" with code taken from DoLa, which averages a
# reversed KL over the vocabulary instead of summing the JSD
# (`lvlm_kit.divergence.js_divergence_dola`). If the two were the same quantity up to the
# vocabulary size, the ratio below would be one.
#
# **What to look for:** how far the median ratio is from one. The shapes of the curves
# agree; their scales do not, so compare figures of the two only by shape.

# %%
js = torch.cat([t.js for t in traces]).double()
dola = torch.cat([t.js_dola for t in traces])
ratio = float((dola * traces[0].meta["vocab_size"] / js.clamp_min(1e-12)).median())
print(f"median of js_dola / (JSD / V): {ratio:.3f} (1 would mean the two agree)")
print(
    "The DoLa-code variant is "
    + ("close to" if abs(ratio - 1) < 0.25 else "far from")
    + " JSD / V here, but not the same quantity: the DoLa variant is unbounded, JSD is at "
    "most ln 2."
)

# %% [markdown]
# ## 5. The claims, with 95% confidence intervals and noise controls
#
# Each claim becomes one statistic with a bootstrap interval over the images and a
# threshold that says in numbers what the paper says in words (`lvlm_kit.claims`). The
# same images go through two noise copies of the model: one re-initialised, one with each
# weight tensor's entries permuted (the model's own weight norms, no learnt structure),
# each made to emit the model's own words (teacher forcing), so that every statistic is
# defined on them, and a third copy whose layers run in a shuffled order: these claims are
# about where in the depth things happen. A statistic that holds on noise says nothing about what the model
# learnt. The stages are detected on half of the images (even positions) and the claims
# judged on the other half, so the detector does not confirm what it found. Verdicts are
# *shown* (the model beats both controls), *not shown*, *inconclusive* (an interval
# straddles the threshold) or *inconclusive (no control)* (a control has no value).

# %%
forced = claims.control_traces(
    lm, traces, [it.image for it in items], PROMPT, SEED, order=True, lens_norm=LENS_NORM
)
control_sets = {name: claims.TraceSet.of(trs) for name, trs in forced.items()}
model_set = claims.TraceSet.of(traces)
results = [
    claims.js_split(model_set, control_sets, claims.ClaimConfig()),
    claims.entities_rise_again(model_set, control_sets, claims.ClaimConfig()),
    claims.three_stages(model_set, control_sets, claims.ClaimConfig()),
]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
split_ratio = st.split_ratio
metrics = notebook.record(
    {
        **st.summary(),
        "split_ratio": split_ratio,
        "mutation_share_by_kind": mutation_share,
        "late_rise_share_by_kind": rise_share,
        "dola_over_jsd_per_v_median": ratio,
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
