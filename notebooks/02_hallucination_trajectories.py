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
# # 02 · Hallucinated vs correct tokens across layers (paper §3, Fig. 3)
#
# **Paper claim.** A hallucinated token shows a probability jump in deep layers, after the critical layers (*mutation*): before it the correct alternative often leads, after it the hallucinated token overtakes. Here each object token is labelled correct/hallucinated with the AMBER scorer's noun analysis, and we find the layer where the emitted token overtakes its final runner-up. On the testbed the default data are probe scenes holding a planted prior's A without its B (e.g. a boat but no fish), where hallucinations have a known cause.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 02_hallucination_trajectories.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p QUANTIZATION 4bit -p DATA /path/to/AMBER`

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
N_IMAGES = 40
SEED = 0
OUTPUT_DIR = None  # None: outputs/<notebook> in the repository, else ./outputs/<notebook>


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
from lvlm_kit import data, notebook, plots

OUTPUT_DIR, lm = notebook.start("02_hallucination_trajectories", globals())


# %% [markdown]
# ## 1. Trace the images, label object tokens, and find where each overtakes its rival
#
# Each object noun of a description is labelled *correct* or *hallucinated* with the AMBER
# scorer's noun analysis. Two rivals are followed through the layers by a second trace:
# its runner-up at the last layer, to find the layer from which the emitted token stays
# ahead of it (the *overtake* layer), and the objects annotated in the image, to see
# whether a real object led before the emitted word won (claim 5). CHAIR (hallucinated object nouns over all
# object nouns), Hal (responses with at least one) and Cover (annotated objects named) are
# AMBER's metrics, scored here with the kit's offline re-implementation.
#
# **What to look for:** how many object tokens are hallucinated at all (a claim about them
# needs several), and in the table, the overtake layers of hallucinated tokens against the
# critical and mutation layers printed above it.

# %%
from lvlm_kit.runs import object_token_events
from lvlm_kit.stages import detect_stages

amber = data.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)
df, traces, score = object_token_events(lm, amber, PROMPT, MAX_NEW_TOKENS, LENS_NORM)
st = detect_stages(traces)
print(
    f"CHAIR {score.chair:.3f}, Hal {score.hal:.3f}, Cover {score.cover:.3f}; "
    f"critical layer {st.critical_layer}, mutation layers {st.mutation_layers}"
)
df[["image", "step", "label", "object", "rival", "overtake"]].head(12)

# %% [markdown]
# ## 2. Fig. 3: a hallucinated token against its runner-up
#
# The paper's Fig. 3 follows a hallucinated object word and the correct word it displaced
# through the layers: the correct word leads after the critical layers, then in the last
# layers the hallucinated one jumps past it. The figure draws the first hallucinated token
# found (or the first object token when none was) against its final runner-up; the table
# below summarises the overtake layers by label.
#
# **What to look for:** whether the two lines cross, and whether the crossing is in the
# deep layers (after the critical layer) or already in the shallow ones.

# %%
hallucinated = df[df.label == "hallucinated"]
if len(df):
    example = (hallucinated if len(hallucinated) else df).iloc[0]
    notebook.show(
        plots.candidate_trajectories(
            example.trace,
            example.step,
            [int(example.trace.token_ids[example.step]), example.rival_id],
            labels={
                int(example.trace.token_ids[example.step]): (
                    f"{example.trace.tokens[example.step].strip()} (emitted, {example.label})"
                ),
                example.rival_id: f"{example.rival.strip()} (runner-up at the last layer)",
            },
        ),
        OUTPUT_DIR,
        "fig3_trajectories",
    )
else:
    print("No object tokens were generated: nothing to plot.")
summary = df.groupby("label").overtake.agg(["count", "mean", "median"])
n_hallucinated = int((df.label == "hallucinated").sum())
print(
    f"{len(traces)} probe scenes: {len(df)} object tokens, {n_hallucinated} of them "
    f"hallucinated (CHAIR {score.chair:.2f}). The claims below judge the "
    f"{len(traces) // 2} images the stages were not detected on"
    + (
        "."
        if n_hallucinated >= 20
        else ": few hallucinated tokens to compare, so expect wide "
        "intervals (more images, N_IMAGES, give more)."
    )
)
summary

# %% [markdown]
# ## 3. The claims, with 95% confidence intervals and noise controls
#
# Each claim becomes one statistic with a bootstrap interval over the images and a
# threshold that says in numbers what the paper says in words (`lvlm_kit.claims`). The
# same images go through two noise copies of the model: one re-initialised, one with each
# weight tensor's entries permuted (the model's own weight norms, no learnt structure). A
# statistic that holds on noise says nothing about what the model learnt. Verdicts are
# *shown* (the model beats both controls), *not shown*, *inconclusive* (an interval
# straddles the threshold) or *inconclusive (no control)* (a control has no value).

# %%
from lvlm_kit import claims

config = claims.ClaimConfig()
model_tokens = claims.labelled_tokens(df, traces, config)
control_tokens = {}
for name, control in claims.controls(lm, SEED).items():
    control_df, control_traces, _ = object_token_events(
        control, amber, PROMPT, MAX_NEW_TOKENS, LENS_NORM, force=traces
    )
    control_tokens[name] = claims.labelled_tokens(control_df, control_traces, config)
results = [
    claims.hallucinations_mutate(model_tokens, control_tokens, config),
    claims.correct_leads_first(model_tokens, control_tokens, config),
]
verdicts = notebook.record_claims(results, OUTPUT_DIR)

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
mean_over = df.groupby("label").overtake.mean().to_dict()
metrics = notebook.record(
    {
        "n_images": len(traces),
        "chair": score.chair,
        "hal": score.hal,
        "cover": score.cover,
        "critical_layer": st.critical_layer,
        "mutation_layers": st.mutation_layers,
        "n_object_tokens": {k: int(v) for k, v in df.label.value_counts().items()},
        "mean_overtake_layer": mean_over,
        "claims": {r.key: r.model.value for r in results},
        "verdicts": {r.key: r.verdict for r in results},
    },
    OUTPUT_DIR,
)
metrics
