# ---
# jupyter:
#   accelerator: GPU
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator
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
# # LLaVA-1.5-7B in 4-bit on Colab: every layer of one description
#
# This notebook installs lvlm-kit, loads the paper's model, LLaVA-1.5-7B, in 4-bit (NF4,
# what a free Colab T4 can hold) and runs the kit's quickstart notebook on it: one image
# described once, every layer decoded with the language head (the *logit lens*), the
# figures and numbers saved under `OUTPUT_DIR`. Choose a GPU runtime first (Runtime →
# Change runtime type). The weights come from the Hugging Face hub on the first run.
#
# The parameters cell below is papermill's: the kit's tests run this notebook with
# `MODEL="testbed"` on a CPU, so the path it takes is the one you take with LLaVA.

# %%
# Install the kit when it is not importable: a clone of the repository (its notebooks are
# run below), installed with pip into the running kernel (no restart needed).
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = "/content/lvlm-kit"  # where the repository is cloned (git clone <its URL> there)
if importlib.util.find_spec("lvlm_kit") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", REPO], check=True)
    importlib.invalidate_caches()

# %% tags=["parameters"]
MODEL = "llava-1.5-7b"  # the paper's model (llava-hf/llava-1.5-7b-hf); "testbed" runs anywhere
QUANTIZATION = "4bit"  # NF4 with double quantization; None for bfloat16 (about 14 GB)
DATA = "testbed"  # a testbed scene; or a folder of your own images
MAX_NEW_TOKENS = 64
OUTPUT_DIR = "outputs/llava_quickstart"  # figures and metrics.json
NOTEBOOK = REPO + "/notebooks/00_quickstart.ipynb"

# %% [markdown]
# What the machine offers: LLaVA-1.5-7B takes about 3.7 GB of GPU memory in NF4 and
# 13.2 GB in bfloat16 (measured with the model's shapes on one H200; the kit's
# docs/real-llava.md has the table). On a CPU the 4-bit model runs too, slowly.

# %%
import torch

if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB")
else:
    print("no GPU: the run will use the CPU")

# %% [markdown]
# Run the quickstart notebook with these parameters (papermill executes it and saves the
# executed copy beside its outputs). **What to look for:** the printed description, then in
# the figures the layer from which the emitted tokens become the lens's top choice.

# %%
import json

import papermill as pm
from IPython.display import Image, display

out = Path(OUTPUT_DIR).resolve()
out.mkdir(parents=True, exist_ok=True)
pm.execute_notebook(
    NOTEBOOK,
    str(out / "00_quickstart.ipynb"),
    parameters={
        "MODEL": MODEL,
        "QUANTIZATION": QUANTIZATION,
        "DATA": DATA,
        "MAX_NEW_TOKENS": MAX_NEW_TOKENS,
        "OUTPUT_DIR": str(out),
    },
    cwd=str(Path(NOTEBOOK).parent),
)
metrics = json.loads((out / "metrics.json").read_text())
print(metrics["generated_text"])
for png in sorted(out.glob("*.png")):
    display(Image(filename=str(png)))

# %% [markdown]
# The numbers the quickstart recorded (`metrics.json`). For the paper's analyses on AMBER,
# run the other notebooks the same way, e.g. `notebooks/03_js_divergence.ipynb` with
# `DATA` set to an AMBER folder; `lvlm-kit reproduce -p MODEL llava-1.5-7b -p QUANTIZATION
# 4bit -p DATA /path/to/AMBER --output out/` runs them all and writes the claims report.

# %%
metrics
