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
# Setup: locally the kit is installed by `make reproduce` / `make test`. In Colab, first
# clone the lvlm-kit repository to /content/lvlm-kit; this cell then installs it.
import sys

if "google.colab" in sys.modules:
    import subprocess

    kit = "/content/lvlm-kit"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", kit], check=True)


# %% tags=["parameters"]
MODEL = "testbed"  # hub id (llava-hf/llava-1.5-7b-hf), local folder, or "testbed"
QUANTIZATION = None  # None, "4bit" or "8bit" (bitsandbytes, CUDA only)
DEVICE = "auto"  # "auto" (GPU if any), "cpu", "cuda", or an accelerate device map
DTYPE = "auto"  # "auto": float32 on the CPU, the checkpoint's on a GPU; or "bfloat16", ...
LENS_NORM = "final_norm"  # "final_norm" (default) or "raw" (the paper authors' code)
DATA = "testbed-probe"  # planted-prior probe scenes (testbed), or an AMBER-layout folder
PROMPT = "Please describe this image in detail."
MAX_NEW_TOKENS = 48
N_IMAGES = 8
SEED = 0
OUTPUT_DIR = None  # default: <repo>/outputs/02_hallucination_trajectories


# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
import torch

from lvlm_kit import data, notebook, plots, trace

OUTPUT_DIR, lm = notebook.start(
    "02_hallucination_trajectories",
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


# %% [markdown]
# ## 1. Trace the images and label object tokens

# %%
import pandas as pd
from tqdm.auto import tqdm

from lvlm_kit.stages import detect_stages, token_kind

from lvlm_kit.hallucination import label_tokens, overtake_layer, score_generative

amber = data.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)
traced = []
for q in tqdm(amber.queries, desc="trace"):
    ann = amber.annotations[q["id"]]
    tr = trace(lm, amber.image_path(q), PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
    labels = label_tokens(tr, ann["truth"], ann.get("hallu", []), amber.relation, amber.safe_words)
    traced.append((q, tr, labels))
st = detect_stages([tr for _, tr, _ in traced])
score = score_generative(
    [{"id": q["id"], "response": tr.generated_text} for q, tr, _ in traced], amber
)
print(
    f"CHAIR {score.chair:.3f}, Hal {score.hal:.3f}, Cover {score.cover:.3f}; "
    f"critical layer {st.critical_layer}, mutation layers {st.mutation_layers}"
)

# %% [markdown]
# ## 2. Where does each object token overtake its runner-up?

# %%
events = []
for q, tr, labels in tqdm(traced, desc="re-trace with rivals"):
    steps = [i for i, lab in enumerate(labels.labels) if lab != "other"]
    if not steps:
        continue
    rivals = [int(tr.topk_ids[i, -1, 1]) for i in steps]  # final-layer runner-up
    watched = trace(
        lm, amber.image_path(q), PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM, watch=rivals
    )
    for i, rival in zip(steps, rivals):
        events.append(
            {
                "image": q["id"],
                "step": i,
                "label": labels.labels[i],
                "object": labels.objects[i],
                "rival": watched.vocab[rival],
                "trace": watched,
                "rival_id": rival,
                "overtake": overtake_layer(watched, i, int(watched.token_ids[i]), rival),
            }
        )
df = pd.DataFrame(
    events, columns=["image", "step", "label", "object", "rival", "trace", "rival_id", "overtake"]
)
df[["image", "step", "label", "object", "rival", "overtake"]].head(12)

# %% [markdown]
# ## 3. Fig. 3: a hallucinated token against its runner-up

# %%
hallucinated = df[df.label == "hallucinated"]
if len(df):
    example = (hallucinated if len(hallucinated) else df).iloc[0]
    notebook.show(
        plots.candidate_trajectories(
            example.trace,
            example.step,
            [int(example.trace.token_ids[example.step]), example.rival_id],
        ),
        OUTPUT_DIR,
        "fig3_trajectories",
    )
else:
    print("No object tokens were generated: nothing to plot.")
summary = df.groupby("label").overtake.agg(["count", "mean", "median"])
summary

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
mean_over = df.groupby("label").overtake.mean().to_dict()
late = float((hallucinated.overtake > st.critical_layer).mean()) if len(hallucinated) else None
metrics = notebook.record(
    {
        "n_images": len(traced),
        "chair": score.chair,
        "hal": score.hal,
        "cover": score.cover,
        "critical_layer": st.critical_layer,
        "mutation_layers": st.mutation_layers,
        "n_object_tokens": {k: int(v) for k, v in df.label.value_counts().items()},
        "mean_overtake_layer": mean_over,
        "share_hallucinated_overtake_after_critical": late,
        "claim_hallucinated_overtake_later": (
            len(hallucinated) > 0
            and mean_over.get("hallucinated", 0) > mean_over.get("correct", float("inf"))
        ),
    },
    OUTPUT_DIR,
)
print(
    f"Claim — hallucinated tokens take over later (deep layers) than correct ones: "
    f"mean overtake layer {mean_over} (critical layer {st.critical_layer}): "
    f"{'shown' if metrics['claim_hallucinated_overtake_later'] else 'NOT shown'} on {MODEL}."
)
metrics
