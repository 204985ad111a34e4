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
# # 05 · Feature encodings of one image's tokens across layers (paper §5, Fig. 6)
#
# **Paper claims.** Projected to 2-D (t-SNE; authors: MaxAbsScaler, perplexity 40, lr 200, 2000 iterations), all tokens cluster together in the first two layers and diverge with depth, and each token's layers lie on a near-linear path. UMAP is shown alongside.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 05_features_single_image.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p QUANTIZATION 4bit -p DATA /path/to/AMBER`

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
N_IMAGES = 1
SEED = 0
OUTPUT_DIR = None  # None: outputs/<notebook> in the repository, else ./outputs/<notebook>


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
from lvlm_kit import data, notebook, plots, trace

OUTPUT_DIR, lm = notebook.start("05_features_single_image", globals())
items = data.resolve_data(DATA, OUTPUT_DIR, N_IMAGES, SEED)


# %% [markdown]
# ## 1. Trace one image, keeping the hidden states
#
# This time the trace keeps the residual stream itself (`keep_hidden=True`), not only its
# lens decoding: for every generated token, the hidden state after each decoder layer
# (layers 1..L, the paper leaves out the embedding layer 0). These are the "feature
# encodings" the paper projects.
#
# **What to look for:** the description and the shape `(tokens, layers, hidden size)`.

# %%
from lvlm_kit.features import (
    path_linearity,
    project,
    shallow_and_deep,
    spread_by_layer,
    token_features,
)

tr = trace(lm, items[0].image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM, keep_hidden=True)
features = token_features(tr)  # [tokens, layers 1..L, d]
print(tr.generated_text, tuple(features.shape))

# %% [markdown]
# ## 2. Fig. 6: t-SNE and UMAP of tokens × layers
#
# Every (token, layer) state becomes one point in 2-D: t-SNE with the authors' settings and
# UMAP beside it (both place points by neighbourhoods, so distances between far clusters
# mean little). Points are coloured by layer and labelled by token. The paper's Fig. 6: all
# tokens start together in the first two layers and fan out with depth, each token's
# layers lying on a nearly straight path. `spread_by_layer` measures the fan: the mean
# distance of each layer's points from their centre, in t-SNE units.
#
# **What to look for:** a tight cluster for the first layers, one arm per token for the
# deep layers, and a spread that grows with the layer.

# %%
coords = {m: project(features, m, seed=SEED) for m in ("tsne", "umap")}
for m, xy in coords.items():
    notebook.show(
        plots.projection_plot(
            xy, tr.tokens, f"{m}: {tr.n_tokens} tokens x {tr.n_layers} layers", model=lm.name
        ),
        OUTPUT_DIR,
        f"fig6_{m}",
    )
spread = spread_by_layer(coords["tsne"])
linearity = path_linearity(coords["tsne"])
early, deep = shallow_and_deep(spread, 2)  # layers 1-2; the deep half
print(
    f"Spread {early:.1f} in layers 1-2, {deep:.1f} in the deep half ({deep / early:.1f} times "
    f"as wide; claim 12 needs 2); median path linearity {float(linearity.median()):.2f} "
    "(1 is a straight path)."
)
spread

# %% [markdown]
# ## 3. The claims, with 95% confidence intervals and noise controls
#
# Each claim becomes one statistic with a bootstrap interval over the tokens of the image and a
# threshold that says in numbers what the paper says in words (`lvlm_kit.claims`). The
# same image goes through two noise copies of the model: one re-initialised, one with each
# weight tensor's entries permuted (the model's own weight norms, no learnt structure),
# each made to emit the model's own words (teacher forcing). A statistic that holds on
# noise says nothing about what the model learnt. Verdicts are
# *shown* (the model beats both controls), *not shown*, *inconclusive* (an interval
# straddles the threshold) or *inconclusive (no control)* (a control has no value).

# %%
from lvlm_kit import claims
from lvlm_kit.features import coords_array

forced = claims.control_traces(
    lm, [tr], [items[0].image], PROMPT, SEED, lens_norm=LENS_NORM, keep_hidden=True
)
control_xy = {
    name: coords_array(project(token_features(trs[0]), "tsne", seed=SEED))
    for name, trs in forced.items()
}
results = [claims.tokens_diverge(coords_array(coords["tsne"]), control_xy, claims.ClaimConfig())]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "n_tokens": tr.n_tokens,
        "n_layers": tr.n_layers,
        "spread_layers_1_2": early,
        "spread_deep": deep,
        "spread_by_layer": spread.round(3).tolist(),
        "median_path_linearity": float(linearity.median()),
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
