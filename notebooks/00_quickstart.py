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
# # 00 · Quickstart: one image, every layer
#
# Load a model, generate a description once, and decode every layer's hidden state with the language head (the *logit lens*). The default model is the embedded testbed, a small LLaVA-architecture model trained on procedural scenes.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 00_quickstart.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p QUANTIZATION 4bit -p DATA /path/to/AMBER`

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
MAX_NEW_TOKENS = 32
N_IMAGES = 1
SEED = 0
OUTPUT_DIR = None  # None: outputs/<notebook> in the repository, else ./outputs/<notebook>


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
from lvlm_kit import data, notebook, plots, trace

OUTPUT_DIR, lm = notebook.start("00_quickstart", globals())
items = data.resolve_data(DATA, OUTPUT_DIR, N_IMAGES, SEED)


# %% [markdown]
# ## 1. Trace one image
#
# `trace` runs one greedy generation (the same tokens as `model.generate`) and records the
# residual stream of every decoder layer at every generated token. Each layer's state is
# then decoded with the model's own final norm and language head, in float32: layer j's
# "early exit" distribution over the vocabulary. Only small summaries are kept per token
# and layer (the emitted token's probability and rank, the top-10 candidates, the entropy,
# the JS divergence to the next layer); the trace is saved to `trace.safetensors` so every
# figure can be redrawn without the model.
#
# **What to look for:** the generated description, then one row per (token, layer) in the
# frame: `prob` is the probability that layer gives the token the model finally emitted,
# `top1` is what that layer would have said.

# %%
from lvlm_kit.widgets import TraceExplorer, topk_table

tr = trace(lm, items[0].image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
tr.save(OUTPUT_DIR / "trace.safetensors")
print(tr.generated_text)
tr.to_frame().head(8)

# %% [markdown]
# ## 2. Probability of each generated token at every layer
#
# The same numbers as a heatmap (the paper's Fig. 2, one image): rows are the generated
# tokens, columns the layers 0..L, colour the probability of the emitted token. The last
# column is exactly the model's own output distribution (the lens's last layer equals the
# model's logits, a test checks it).
#
# **What to look for:** where each row turns bright, i.e. at which depth the model settles
# on the token it will say. Notebook 01 measures this over many images.

# %%
notebook.show(plots.token_probability_heatmap(tr), OUTPUT_DIR, "token_probabilities")

# %% [markdown]
# ## 3. Explore a token: top-k per layer and its trajectory
#
# Move the slider to pick a generated token: the line shows its probability at every
# layer, the table the top-5 candidates of every layer. In a headless run (papermill,
# `make reproduce`) the widget is saved but not interactive; the next cell prints the same
# table.

# %%
explorer = TraceExplorer(tr)
explorer.widget

# %% [markdown]
# ## 4. The same table without widgets (for headless runs)
#
# The top-3 candidates of every layer for the second generated token. **What to look for:**
# which layers' candidates are unrelated to the emitted word (and how sure the lens is of
# them there); from which layer on the emitted token is top-1 (rank zero), and how its
# probability grows.

# %%
topk_table(tr, min(1, tr.n_tokens - 1), k=3)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "n_layers": tr.n_layers,
        "n_tokens": tr.n_tokens,
        "lens_norm": tr.lens_norm,
        "generated_text": tr.generated_text,
        "mean_p_first_layer": float(tr.token_prob[:, 0].mean()),
        "mean_p_last_layer": float(tr.token_prob[:, -1].mean()),
        "last_layer_top1_share": float((tr.token_rank[:, -1] == 0).float().mean()),
    },
    OUTPUT_DIR,
)
metrics
