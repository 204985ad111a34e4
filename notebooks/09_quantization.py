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
# # 09 · Can I trust a 4-bit run of this paper?
#
# Most people run LLaVA-1.5-7B in 4-bit: a free Colab T4 cannot hold it in 16-bit. The paper's analysis reads every layer's output distribution, so quantization error could move exactly what it measures. This notebook runs the same images through the model in full precision and in 8-bit, NF4 and FP4 (bitsandbytes, on the CPU or a GPU) and asks, for each: does it generate the same tokens, are its lens distributions the same layer by layer, is its adjacent-layer JS curve the same, are the critical and mutation layers where they were, does it hallucinate as often, and how much memory does it save?
#
# Each question is an equivalence check with a 95% bootstrap interval over the images: it holds when the whole interval lies inside the margin that says what "the same" means. A copy of the model with its weights permuted inside each tensor (the model's own weight values, no learnt structure) must *not* pass: a check that cannot tell that copy from the model measures nothing. The images are probe scenes, where the full-precision model does hallucinate, so "hallucinates as often" is not a comparison of zeros.
#
# Run on LLaVA-1.5-7B (GPU; the reference is then bfloat16):
# `papermill 09_quantization.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p DATA /path/to/AMBER`

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
QUANTIZATION = None  # the reference's: keep None (full precision) to compare against
DEVICE = "auto"  # "auto" (GPU if any), "cpu", "cuda", or an accelerate device map
DTYPE = "auto"  # "auto": float32 on the CPU, the checkpoint's on a GPU; or "bfloat16", ...
LENS_NORM = "final_norm"  # "final_norm" (default) or "raw" (the paper authors' code)
DATA = "testbed-probe"  # "testbed-probe" (scenes that invite a hallucination), or an AMBER folder
PROMPT = "Please describe this image in detail."
MAX_NEW_TOKENS = 48
N_IMAGES = 12
SEED = 0
OUTPUT_DIR = None  # None: outputs/<notebook> in the repository, else ./outputs/<notebook>
VARIANTS = ["8bit", "nf4", "fp4"]  # quantizations to compare ("4bit" is nf4 + double quant)


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the reference model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
from lvlm_kit import claims, compare, data, notebook, plots, runs

OUTPUT_DIR, lm = notebook.start("09_quantization", globals())
amber = data.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)

# %% [markdown]
# ## 1. The reference run
#
# Trace every image with the full-precision model: generated tokens, every layer's lens distribution, adjacent-layer JS, and the AMBER hallucination score of each description.

# %%
reference = runs.run(lm, amber, PROMPT, MAX_NEW_TOKENS, LENS_NORM, N_IMAGES, name="full")
print(
    f"full precision: CHAIR {reference.chair:.3f}, "
    f"critical layer {reference.stages.critical_layer}, "
    f"mutation layers {reference.stages.mutation_layers}"
)

# %% [markdown]
# ## 2. The quantized runs, and a permuted-weight control
#
# Each variant is loaded fresh with bitsandbytes (the language head stays in full precision, as transformers does by default) and traced on the same images. `compare.compare` then measures, image by image, how far it is from the reference. The per-layer KL is measured on the reference's own tokens (teacher forcing), so both models are read at the same positions even where their generations part.
#
# The control is the reference with each weight tensor's entries permuted (full precision): every check must tell it apart from the reference.

# %%
comparisons = {}
for q in VARIANTS:
    quantized = notebook.load(MODEL, q, DEVICE, DTYPE)
    other = runs.run(quantized, amber, PROMPT, MAX_NEW_TOKENS, LENS_NORM, N_IMAGES, name=q)
    comparisons[q] = compare.compare(lm, reference, quantized, other, amber, PROMPT, LENS_NORM)
    del quantized
permuted = claims.permuted_control(lm, SEED)
permuted_run = runs.run(
    permuted, amber, PROMPT, MAX_NEW_TOKENS, LENS_NORM, N_IMAGES, name="permuted weights"
)
control = compare.compare(lm, reference, permuted, permuted_run, amber, PROMPT, LENS_NORM)

# %% [markdown]
# ## 3. What each variant keeps
#
# One row per run. Memory is the model's parameters and buffers as stored (4-bit weights count half a byte). Look at the token agreement first: if a variant generates different text, every later difference follows from it.

# %%
summary = compare.summary_table(reference, [*comparisons.values(), control])
for name, row in summary.iterrows():
    print(
        f"{name}: {row['token agreement']:.0%} of the full model's tokens, "
        f"{row['memory (MB)']:.1f} MB ({row['memory (MB)'] / summary.loc['full', 'memory (MB)']:.0%} "
        "of full precision)"
    )
summary.round(4)

# %% [markdown]
# ## 4. Where in the model the quantized lens differs
#
# KL(full ‖ quantized) of the lens distribution at each layer, averaged over the tokens of each image (band: 95% interval over images). Quantization error enters at every layer and accumulates along the residual stream; a curve that stays low to the last layer means the layer picture survives.

# %%
notebook.show(
    plots.layer_lines(
        {q: c.lens_kl for q, c in comparisons.items()},
        "KL (nats)",
        "lens KL(full ‖ quantized) per layer",
        log=True,
        model=lm.name,
        lens=LENS_NORM,
        references={
            "check 17's margin": claims.ClaimConfig().lens_close,
            "permuted copy, worst layer": control.worst_lens_kl,
        },
    ),
    OUTPUT_DIR,
    "quantization_lens_kl",
)
print(
    "worst-layer lens KL (nats): "
    + ", ".join(f"{q} {c.worst_lens_kl:.2g}" for q, c in comparisons.items())
    + f"; the permuted-weight control {control.worst_lens_kl:.2g}"
)

# %% [markdown]
# ## 5. The adjacent-layer JS curve of each run
#
# The stages of the paper (rapid evolution, stabilisation, mutation) are read from this curve; shaded as detected on the full-precision run.

# %%
notebook.show(
    plots.js_curve(
        reference.stages,
        {q: c.other.traces for q, c in comparisons.items()},
        traces=reference.traces,
    ),
    OUTPUT_DIR,
    "quantization_js_curves",
)
for q, c in comparisons.items():
    print(
        f"{q}: JS-curve correlation {c.js_correlation.mean():.3f}; critical layer "
        f"{c.other.stages.critical_layer} (full {reference.stages.critical_layer}), first "
        f"mutation layer {c.other.stages.first_mutation_layer} (full "
        f"{reference.stages.first_mutation_layer})"
    )

# %% [markdown]
# ## 6. The checks, with 95% confidence intervals and a permuted-weight control
#
# Five checks per variant (`lvlm_kit.claims`, numbers 16–20): the margins that say what "the same" means are fields of `ClaimConfig`, printed below. Verdicts are *shown* (the whole interval inside the margin, and the control outside it), *not shown*, or *inconclusive* (the interval straddles the margin).

# %%
cfg = claims.ClaimConfig()
print(
    f"margins: at least {cfg.same_tokens:.0%} of the tokens; worst-layer lens KL at most "
    f"{cfg.lens_close:g} nats; JS-curve correlation "
    f"at least {cfg.js_kept:g}; stages within {cfg.stages_kept:g} layer; CHAIR and Cover each "
    f"within {cfg.hallucination_kept:g}"
)
checks = (
    claims.quant_same_tokens,
    claims.quant_lens_close,
    claims.quant_js_kept,
    claims.quant_stages_kept,
    claims.quant_hallucination_kept,
)
results = [check(c, {"permuted": control}, cfg) for c in comparisons.values() for check in checks]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "memory_mb": summary["memory (MB)"].to_dict(),
        "token_agreement": summary["token agreement"].to_dict(),
        "chair": summary["CHAIR"].to_dict(),
        "stage_layers": {
            run: [int(row["critical layer"]), int(row["first mutation layer"])]
            for run, row in summary.iterrows()
        },
        "lens_kl_per_layer": {q: c.lens_kl.mean(0).tolist() for q, c in comparisons.items()},
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
