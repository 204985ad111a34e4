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
import math

from lvlm_kit import claims, data, notebook, plots, runs, stages

OUTPUT_DIR, lm = notebook.start("01_token_probabilities", globals())
items = data.resolve_data(DATA, OUTPUT_DIR, N_IMAGES, SEED)


# %% [markdown]
# ## 1. Trace the images
#
# `trace` generates one greedy description per image (the same tokens as plain `generate`)
# and, at every generated token, decodes the residual stream of every layer with the
# model's own final norm and language head (the *logit lens*, in float32). It keeps, per
# token and layer, the probability of the token that was finally emitted, its rank, the
# top-10 candidates, the entropy and the JS divergence to the next layer; the full
# `[tokens, layers, vocabulary]` array is never held. `detect_stages` then finds the
# *critical layer*: the layer where the mean adjacent-layer JS divergence drops from its
# shallow level to its deep level (notebook 03 looks at that curve itself).
#
# **What to look for:** the printed description of the first image, to read the figures
# below against.

# %%
from lvlm_kit.stages import detect_stages, token_kind

traces = runs.trace_images(
    lm, [it.image for it in items], PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM
)
st = detect_stages(traces)
print(traces[0].generated_text)

# %% [markdown]
# ## 2. Fig. 2: probability of each generated token by layer
#
# The paper's Fig. 2 (left) is a heatmap: one row per generated token, one column per
# layer, the colour the probability that layer's lens gives the token the model finally
# emitted. In LLaVA-1.5-7B the paper sees an almost empty left part (probabilities near 0)
# and a sudden brightening around layers 18-20 of 32, the *critical layers*.
#
# **What to look for:** a dark block on the left, a bright block on the right, and where
# the change happens relative to the dashed critical layer. Rows that brighten late are the
# tokens the model decided on late.

# %%
notebook.show(
    plots.token_probability_heatmap(traces[0], 24, st), OUTPUT_DIR, "fig2_token_probabilities"
)
c, L = st.critical_layer, st.n_layers
print(
    f"Critical layer {c} of {L}: relative depth {c / L:.2f}, where the paper finds about "
    "0.6 in LLaVA-1.5-7B (layers 18-20 of 32)."
)

# %% [markdown]
# ## 3. Near zero in shallow layers, a sharp rise at the critical layer
#
# The figure in two numbers: the mean probability of the emitted token before the critical
# layer and from it on, and the layer into which the mean probability rises most.
# "Near zero" and "sharp" are turned into thresholds in the claims below (claims 1 and 2).
#
# **What to look for:** a shallow mean far below the deep mean; the steepest rise close to
# the critical layer.

# %%
profile = stages.probability_profile(traces, st)
c = st.critical_layer
shallow_p, deep_p, steepest = profile["shallow"], profile["deep"], profile["steepest"]
print(
    f"mean p(emitted) in layers 0..{c - 1}: {shallow_p:.3f}; in layers {c}..{st.n_layers}: "
    f"{deep_p:.3f}; steepest mean rise into layer {steepest}; median per-token critical "
    f"layer {st.summary()['median_token_critical']:.0f} of {st.n_layers}"
)
notebook.show(plots.probability_curve(traces, st), OUTPUT_DIR, "fig2_mean_probability")
share = shallow_p / profile["last"]
near_zero = claims.ClaimConfig().near_zero_share
where = "at" if abs(steepest - c) <= 1 else "after" if steepest > c else "before"
print(
    f"Before the critical layer the emitted token has {share:.2f} of its last-layer "
    f"probability on average ({'near zero' if share <= near_zero else 'not near zero'} by "
    f"the claims' rule, at most {near_zero:g}); the steepest mean rise is into layer "
    f"{steepest} of {L}, {where} the critical layer."
)

# %% [markdown]
# ## 4. Content tokens keep switching candidates in deep layers
#
# The paper's Fig. 2 (right) follows the top candidates of single tokens across layers:
# function words and punctuation settle right after the critical layers, while content
# words (objects, colours, sizes, counts) keep trading places with rival candidates until
# the last layers. Here each token's top-1 candidate is compared between consecutive
# layers after the critical layer, counting the switches, separately for function and
# content tokens (`lvlm_kit.stages.token_kind`); the figure shows the candidates of the
# first content token of the first description.
#
# **What to look for:** in the figure, several candidates with comparable probability in
# the deep layers; in the printed numbers, more switches for content than for function
# tokens.

# %%
by_kind = stages.switches_by_kind(traces, c)
step = next((i for i, tok in enumerate(traces[0].tokens) if token_kind(tok) == "content"), 0)
notebook.show(plots.candidate_trajectories(traces[0], step), OUTPUT_DIR, "fig2_candidates")
print(f"top-1 switches after the critical layer, per token: {by_kind}")
content_sw, function_sw = by_kind.get("content", math.nan), by_kind.get("function", math.nan)
print(
    f"Content tokens switch their top-1 candidate {content_sw:.1f} times after the critical "
    f"layer, function tokens {function_sw:.1f} times: "
    + (
        "more for content tokens, the pattern of the paper."
        if content_sw > function_sw
        else "not more for content tokens, unlike the paper."
    )
)

# %% [markdown]
# ## 5. The claims, with 95% confidence intervals and noise controls
#
# Each claim becomes one statistic with a bootstrap interval over the images and a
# threshold that says in numbers what the paper says in words (`lvlm_kit.claims`). The
# same images go through two noise copies of the model: one re-initialised, one with each
# weight tensor's entries permuted (the model's own weight norms, no learnt structure),
# each generating its own words for claims 1 and 2 (the emitted token's own rise; for these
# claims about where in the depth the rise happens, also a copy whose layers run in a
# shuffled order) and made
# to emit the model's words for claim 3 (teacher forcing, so that it has content and
# function words to compare); a class contrast must also beat the same contrast with the
# word classes shuffled within each image. A statistic that holds on noise says nothing
# about what the model learnt. The stages are detected on half of the images (even positions) and the claims
# judged on the other half, so the detector does not confirm what it found. Verdicts are
# *shown* (the model beats both controls), *not shown*, *inconclusive* (an interval
# straddles the threshold) or *inconclusive (no control)* (a control has no value).

# %%
images = [it.image for it in items]
copies = claims.controls(lm, SEED, order=True)  # built once, read twice
free = claims.control_traces(
    lm, traces, images, PROMPT, forced=False, copies=copies, lens_norm=LENS_NORM
)
forced = claims.control_traces(
    lm,
    traces,
    images,
    PROMPT,
    lens_norm=LENS_NORM,
    copies={name: copies[name] for name in claims.CONTROL_KINDS},
)
free_sets = {name: claims.TraceSet.of(trs) for name, trs in free.items()}
forced_sets = {name: claims.TraceSet.of(trs) for name, trs in forced.items()}
model_set = claims.TraceSet.of(traces)
results = [
    claims.near_zero_shallow(model_set, free_sets, claims.ClaimConfig()),
    claims.sharp_rise(model_set, free_sets, claims.ClaimConfig()),
    claims.content_keeps_changing(model_set, forced_sets, claims.ClaimConfig()),
]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "n_tokens": sum(t.n_tokens for t in traces),
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
