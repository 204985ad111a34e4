"""Content of each notebook (sections and headline numbers); the template is build.py."""

IMPORTS = """\
import pandas as pd
from tqdm.auto import tqdm

from lvlm_kit.stages import detect_stages, token_kind
"""

QUICKSTART = dict(
    name="00_quickstart",
    title="00 · Quickstart: one image, every layer",
    claims=(
        "Load a model, generate a description once, and decode every layer's hidden state "
        "with the language head (the *logit lens*). The default model is the embedded "
        "testbed, a small LLaVA-architecture model trained on procedural scenes."
    ),
    max_new_tokens=32,
    n_images=1,
    sections=[
        ("Trace one image", """
from lvlm_kit.widgets import TraceExplorer, topk_table

tr = trace(lm, items[0].image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
tr.save(OUTPUT_DIR / "trace.safetensors")
print(tr.generated_text)
tr.to_frame().head(8)
"""),
        ("Probability of each generated token at every layer", """
notebook.show(plots.token_probability_heatmap(tr), OUTPUT_DIR, "token_probabilities")
"""),
        ("Explore a token: top-k per layer and its trajectory", """
explorer = TraceExplorer(tr)
explorer.widget
"""),
        ("The same table without widgets (for headless runs)", """
topk_table(tr, min(1, tr.n_tokens - 1), k=3)
"""),
    ],
    metrics="""
metrics = notebook.record({
    "n_layers": tr.n_layers,
    "n_tokens": tr.n_tokens,
    "lens_norm": tr.lens_norm,
    "generated_text": tr.generated_text,
    "mean_p_first_layer": float(tr.token_prob[:, 0].mean()),
    "mean_p_last_layer": float(tr.token_prob[:, -1].mean()),
    "last_layer_top1_share": float((tr.token_rank[:, -1] == 0).float().mean()),
}, OUTPUT_DIR)
metrics
""",
)

TOKEN_PROBABILITIES = dict(
    name="01_token_probabilities",
    title="01 · Token probabilities across layers (paper §3, Fig. 2)",
    claims=(
        "**Paper claims.** (1) Every generated token's probability is near zero in the "
        "shallow layers and rises sharply around the *critical layers* (~20 of 32 in "
        "LLaVA-1.5-7B). (2) Easy tokens (punctuation, function words) settle after the "
        "critical layers, while content tokens (nouns, attributes, attribute prepositions) "
        "keep switching between candidates in deep layers."
    ),
    sections=[
        ("Trace the images", IMPORTS + """
traces = [trace(lm, it.image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
          for it in tqdm(items, desc="trace")]
st = detect_stages(traces)
print(traces[0].generated_text)
"""),
        ("Fig. 2: probability of each generated token by layer", """
notebook.show(plots.token_probability_heatmap(traces[0], 24, st), OUTPUT_DIR, "fig2_token_probabilities")
"""),
        ("Claim 1: near zero in shallow layers, sharp rise at the critical layer", """
probs = torch.cat([t.token_prob for t in traces])  # [tokens, L+1]
c = st.critical_layer
shallow_p, deep_p = float(probs[:, :c].mean()), float(probs[:, c:].mean())
steepest = int((probs[:, 1:] - probs[:, :-1]).mean(0).argmax()) + 1
print(f"mean p(emitted) in layers 0..{c - 1}: {shallow_p:.3f}; in layers {c}..{st.n_layers}: "
      f"{deep_p:.3f}; steepest mean rise into layer {steepest}; median per-token critical "
      f"layer {st.summary()['median_token_critical']:.0f} of {st.n_layers}")
"""),
        ("Claim 2: content tokens keep switching candidates in deep layers", """
kinds = [token_kind(tok) for t in traces for tok in t.tokens]
top1 = torch.cat([t.topk_ids[:, :, 0] for t in traces])  # [tokens, L+1] top-1 id per layer
switches = (top1[:, c + 1:] != top1[:, c:-1]).sum(1).float()
by_kind = {k: float(switches[[i for i, x in enumerate(kinds) if x == k]].mean())
           for k in ("function", "content") if k in kinds}
step = next((i for i, tok in enumerate(traces[0].tokens) if token_kind(tok) == "content"), 0)
notebook.show(plots.candidate_trajectories(traces[0], step), OUTPUT_DIR, "fig2_candidates")
print(f"top-1 switches after the critical layer, per token: {by_kind}")
"""),
    ],
    metrics="""
metrics = notebook.record({
    "n_tokens": int(probs.shape[0]), "n_layers": st.n_layers, "critical_layer": c,
    "mean_p_shallow": shallow_p, "mean_p_deep": deep_p, "steepest_rise_layer": steepest,
    "median_token_critical": st.summary()["median_token_critical"],
    "deep_top1_switches": by_kind,
    "claim_near_zero_then_rise": shallow_p < 0.5 * deep_p,
    "claim_content_switches_more": by_kind.get("content", 0) > by_kind.get("function", 0),
}, OUTPUT_DIR)
print(f"Claim 1 — near zero before, sharp rise at the critical layer ({c} of {st.n_layers}; "
      f"mean p {shallow_p:.2f} vs {deep_p:.2f}): "
      f"{'shown' if metrics['claim_near_zero_then_rise'] else 'NOT shown'} on {MODEL}.")
print(f"Claim 2 — content tokens switch top-1 more in deep layers "
      f"({by_kind.get('content', 0):.2f} vs {by_kind.get('function', 0):.2f}): "
      f"{'shown' if metrics['claim_content_switches_more'] else 'NOT shown'} on {MODEL}.")
metrics
""",
)

HALLUCINATION = dict(
    name="02_hallucination_trajectories",
    title="02 · Hallucinated vs correct tokens across layers (paper §3, Fig. 3)",
    claims=(
        "**Paper claim.** A hallucinated token shows a probability jump in deep layers, "
        "after the critical layers (*mutation*): before it the correct alternative often "
        "leads, after it the hallucinated token overtakes. Here each object token is "
        "labelled correct/hallucinated with the AMBER scorer's noun analysis, and we find the "
        "layer where the emitted token overtakes its final runner-up. On the testbed the "
        "default data are probe scenes holding a planted prior's A without its B "
        "(e.g. a boat but no fish), where hallucinations have a known cause."
    ),
    sections=[
        ("Trace the images and label object tokens", IMPORTS + """
from lvlm_kit.hallucination import label_tokens, overtake_layer, score_generative

amber = notebook.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)
traced = []
for q in tqdm(amber.queries, desc="trace"):
    ann = amber.annotations[q["id"]]
    tr = trace(lm, amber.image_path(q), PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
    labels = label_tokens(tr, ann["truth"], ann.get("hallu", []), amber.relation, amber.safe_words)
    traced.append((q, tr, labels))
st = detect_stages([tr for _, tr, _ in traced])
score = score_generative([{"id": q["id"], "response": tr.generated_text} for q, tr, _ in traced], amber)
print(f"CHAIR {score.chair:.3f}, Hal {score.hal:.3f}, Cover {score.cover:.3f}; "
      f"critical layer {st.critical_layer}, mutation layers {st.mutation_layers}")
"""),
        ("Where does each object token overtake its runner-up?", """
events = []
for q, tr, labels in tqdm(traced, desc="re-trace with rivals"):
    steps = [i for i, lab in enumerate(labels.labels) if lab != "other"]
    if not steps:
        continue
    rivals = [int(tr.topk_ids[i, -1, 1]) for i in steps]  # final-layer runner-up
    watched = trace(lm, amber.image_path(q), PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM, watch=rivals)
    for i, rival in zip(steps, rivals):
        events.append({
            "image": q["id"], "step": i, "label": labels.labels[i], "object": labels.objects[i],
            "rival": watched.vocab[rival], "trace": watched, "rival_id": rival,
            "overtake": overtake_layer(watched, i, int(watched.token_ids[i]), rival),
        })
df = pd.DataFrame(events, columns=["image", "step", "label", "object", "rival", "trace", "rival_id", "overtake"])
df[["image", "step", "label", "object", "rival", "overtake"]].head(12)
"""),
        ("Fig. 3: a hallucinated token against its runner-up", """
hallucinated = df[df.label == "hallucinated"]
if len(df):
    example = (hallucinated if len(hallucinated) else df).iloc[0]
    notebook.show(plots.candidate_trajectories(example.trace, example.step, [int(example.trace.token_ids[example.step]), example.rival_id]), OUTPUT_DIR, "fig3_trajectories")
else:
    print("No object tokens were generated: nothing to plot.")
summary = df.groupby("label").overtake.agg(["count", "mean", "median"])
summary
"""),
    ],
    metrics="""
mean_over = df.groupby("label").overtake.mean().to_dict()
late = float((hallucinated.overtake > st.critical_layer).mean()) if len(hallucinated) else None
metrics = notebook.record({
    "n_images": len(traced), "chair": score.chair, "hal": score.hal, "cover": score.cover,
    "critical_layer": st.critical_layer, "mutation_layers": st.mutation_layers,
    "n_object_tokens": {k: int(v) for k, v in df.label.value_counts().items()},
    "mean_overtake_layer": mean_over,
    "share_hallucinated_overtake_after_critical": late,
    "claim_hallucinated_overtake_later": (
        len(hallucinated) > 0
        and mean_over.get("hallucinated", 0) > mean_over.get("correct", float("inf"))),
}, OUTPUT_DIR)
print(f"Claim — hallucinated tokens take over later (deep layers) than correct ones: "
      f"mean overtake layer {mean_over} (critical layer {st.critical_layer}): "
      f"{'shown' if metrics['claim_hallucinated_overtake_later'] else 'NOT shown'} on {MODEL}.")
metrics
""",
    extra_params='DATA = "testbed-probe"  # planted-prior probe scenes on the testbed\n',
)

JS_DIVERGENCE = dict(
    name="03_js_divergence",
    title="03 · JS divergence between adjacent layers: three stages (paper §4, Fig. 4)",
    claims=(
        "**Paper claims.** (1) Adjacent-layer JS divergence is large in shallow layers "
        "(rapid evolution) and small in deep layers (stabilisation), split around a critical "
        "layer. (2) For key entity tokens it *mutates* again in deep layers. Hence three "
        "stages: rapid evolution → stabilisation → mutation. JS here is the true JSD (nats, "
        "≤ ln 2); the DoLa-code variant the paper's figures used is compared at the end."
    ),
    sections=[
        ("Trace the images", IMPORTS + """
traces = [trace(lm, it.image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM, dola_compat=True)
          for it in tqdm(items, desc="trace")]
st = detect_stages(traces)
pd.Series(st.summary())
"""),
        ("Fig. 4: JS divergence of adjacent layers per token, and the stages", """
notebook.show(plots.js_heatmap(traces[0]), OUTPUT_DIR, "fig4_js_heatmap")
notebook.show(plots.js_curve(st), OUTPUT_DIR, "fig4_js_stages")
"""),
        ("Claim 2: key entities mutate in deep layers more than other tokens", """
kinds = [token_kind(tok) for t in traces for tok in t.tokens]
mutating = [bool(m) for m in st.token_mutations]
mutation_share = {k: sum(m for m, x in zip(mutating, kinds) if x == k) / max(kinds.count(k), 1)
                  for k in ("function", "content")}
print(f"share of tokens with a deep-layer mutation: {mutation_share}")
"""),
        ("The DoLa-code JS variant against true JSD / V", """
js = torch.cat([t.js for t in traces]).double()
dola = torch.cat([t.js_dola for t in traces])
ratio = float((dola * traces[0].meta["vocab_size"] / js.clamp_min(1e-12)).median())
print(f"median of js_dola / (JSD / V): {ratio:.3f} (1 would mean the two agree)")
"""),
    ],
    metrics="""
split_ratio = st.shallow_js / max(st.deep_js, 1e-12)
metrics = notebook.record({
    **st.summary(), "split_ratio": split_ratio, "mutation_share_by_kind": mutation_share,
    "dola_over_jsd_per_v_median": ratio,
    "claim_shallow_deep_split": st.has_split and split_ratio > 3,
    "claim_entities_mutate_more": mutation_share["content"] > mutation_share["function"],
}, OUTPUT_DIR)
print(f"Claim 1 — JS split at the critical layer {st.critical_layer} of {st.n_layers}; "
      f"shallow mean JS {st.shallow_js:.3f} vs deep {st.deep_js:.4f} ({split_ratio:.0f}x): "
      f"{'shown' if metrics['claim_shallow_deep_split'] else 'NOT shown'} on {MODEL}.")
print(f"Claim 2 — deep mutations at layers {st.mutation_layers}, content tokens "
      f"{mutation_share['content']:.2f} vs function tokens {mutation_share['function']:.2f}: "
      f"{'shown' if metrics['claim_entities_mutate_more'] else 'NOT shown'} on {MODEL}.")
metrics
""",
)

SKIP = dict(
    name="04_skip_connections",
    title="04 · Skip connections during generation (paper §4, Fig. 5)",
    claims=(
        "**Paper claims.** skip.1 (jump from the critical layers to the mutation layers, "
        "dropping the stable middle) keeps the output almost unchanged, hallucinations "
        "included; skip.2 (skip only the mutation layers) keeps the description and corrects "
        "some hallucinations; skip.3 (jump from the critical layers to the last few layers) "
        "is similar but hallucinates more. Layer lists are derived from detected stages."
    ),
    sections=[
        ("Detect the stages", IMPORTS + """
import difflib

from lvlm_kit.applications import generate_texts
from lvlm_kit.hallucination import score_generative
from lvlm_kit.skipping import PRESETS, skip_preset

amber = notebook.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)
images = [amber.image_path(q) for q in amber.queries]
traces = [trace(lm, im, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM) for im in tqdm(images, desc="trace")]
st = detect_stages(traces)
presets = {}
for name in PRESETS:
    try:
        presets[name] = skip_preset(st, name)
    except ValueError as err:
        print(f"{name}: {err}")
print(f"critical layer {st.critical_layer}, mutation layers {st.mutation_layers}; skipped decoder layers: {presets}")
"""),
        ("Generate with each skip preset", """
texts = {"plain": [t.generated_text for t in traces]}
for name, layers in presets.items():
    texts[name] = generate_texts(lm, images, [PROMPT] * len(images), MAX_NEW_TOKENS, skip=layers, desc=name)
pd.DataFrame({name: t[:3] for name, t in texts.items()})
"""),
        ("Fig. 5: what each preset keeps and what it hallucinates", """
results = {}
for name, t in texts.items():
    s = score_generative([{"id": q["id"], "response": r} for q, r in zip(amber.queries, t)], amber)
    overlap = sum(difflib.SequenceMatcher(None, a.split(), b.split()).ratio()
                  for a, b in zip(t, texts["plain"])) / len(t)
    results[name] = {**s.as_dict(), "overlap_with_plain": overlap, "skipped": presets.get(name, [])}
notebook.show(plots.decoding_bars(results), OUTPUT_DIR, "fig5_skip_presets")
pd.DataFrame(results).T
"""),
    ],
    metrics="""
metrics = notebook.record({"critical_layer": st.critical_layer, "mutation_layers": st.mutation_layers,
                           "presets": results}, OUTPUT_DIR)
if "skip1" in results:
    print(f"skip.1 keeps the output (word overlap {results['skip1']['overlap_with_plain']:.2f}): "
          f"{'shown' if results['skip1']['overlap_with_plain'] >= 0.8 else 'NOT shown'} on {MODEL}.")
if "skip2" in results:
    print(f"skip.2 lowers CHAIR ({results['plain']['chair']:.3f} -> {results['skip2']['chair']:.3f}): "
          f"{'shown' if results['skip2']['chair'] < results['plain']['chair'] else 'NOT shown'} on {MODEL}.")
if "skip1" in results and "skip3" in results:
    print(f"skip.3 hallucinates more than skip.1 (CHAIR {results['skip3']['chair']:.3f} vs "
          f"{results['skip1']['chair']:.3f}): "
          f"{'shown' if results['skip3']['chair'] > results['skip1']['chair'] else 'NOT shown'} on {MODEL}.")
metrics
""",
)

FEATURES_SINGLE = dict(
    name="05_features_single_image",
    title="05 · Feature encodings of one image's tokens across layers (paper §5, Fig. 6)",
    claims=(
        "**Paper claims.** Projected to 2-D (t-SNE; authors: MaxAbsScaler, perplexity 40, "
        "lr 200, 2000 iterations), all tokens cluster together in the first two layers and "
        "diverge with depth, and each token's layers lie on a near-linear path. UMAP is "
        "shown alongside."
    ),
    n_images=1,
    sections=[
        ("Trace one image, keeping the hidden states", """
from lvlm_kit.features import path_linearity, project, spread_by_layer, token_features

tr = trace(lm, items[0].image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM, keep_hidden=True)
features = token_features(tr)  # [tokens, layers 1..L, d]
print(tr.generated_text, tuple(features.shape))
"""),
        ("Fig. 6: t-SNE and UMAP of tokens × layers", """
coords = {m: project(features, m, seed=SEED) for m in ("tsne", "umap")}
for m, xy in coords.items():
    notebook.show(plots.projection_plot(xy, tr.tokens, f"{m}: {tr.n_tokens} tokens x {tr.n_layers} layers"), OUTPUT_DIR, f"fig6_{m}")
spread = spread_by_layer(coords["tsne"])
linearity = path_linearity(coords["tsne"])
spread
"""),
    ],
    metrics="""
L = tr.n_layers
early, deep = float(spread.loc[[1, 2]].mean()), float(spread.loc[L // 2 + 1:].mean())
metrics = notebook.record({
    "n_tokens": tr.n_tokens, "n_layers": L, "spread_layers_1_2": early, "spread_deep": deep,
    "spread_by_layer": spread.round(3).tolist(), "median_path_linearity": float(linearity.median()),
    "claim_cluster_then_diverge": early < deep,
    "claim_near_linear_paths": float(linearity.median()) > 0.5,
}, OUTPUT_DIR)
print(f"Claim — tokens cluster in layers 1-2 (spread {early:.1f}) and diverge deeper ({deep:.1f}): "
      f"{'shown' if metrics['claim_cluster_then_diverge'] else 'NOT shown'} on {MODEL}.")
print(f"Claim — near-linear paths (median straightness {float(linearity.median()):.2f}, 1 = straight): "
      f"{'shown' if metrics['claim_near_linear_paths'] else 'NOT shown'} on {MODEL}.")
metrics
""",
)

FEATURES_VQA = dict(
    name="06_features_vqa",
    title="06 · Answer-token features across images (paper §5, Fig. 7)",
    claims=(
        "**Paper claims.** For single-word VQA answers over 12 images per question, the "
        "answer token's features (t-SNE, perplexity 35) form a tight *neck* in shallow "
        "layers, fan out in deep layers (the *guitar body*), and re-cluster at the last "
        "layer. On the testbed the questions ask the colour of four objects."
    ),
    n_images=1,
    max_new_tokens=2,
    extra_params=(
        'QUESTION_OBJECTS = ["flower", "boat", "ball", "star"]  # testbed: "what colour is the X?"\n'
        "IMAGES_PER_QUESTION = 12\n"
    ),
    sections=[
        ("Ask every question about its images", IMPORTS + """
from lvlm_kit.features import answer_features, project, spread_by_layer

vqa = notebook.vqa_items(DATA, OUTPUT_DIR, QUESTION_OBJECTS, IMAGES_PER_QUESTION, SEED)
traces = [trace(lm, v["image"], v["question"], MAX_NEW_TOKENS, lens_norm=LENS_NORM, keep_hidden=True)
          for v in tqdm(vqa, desc="trace")]
answers = [t.tokens[0].strip() for t in traces]
accuracy = sum(a == v.get("answer") for a, v in zip(answers, vqa)) / len(vqa)
print(f"{len(vqa)} questions, answer accuracy {accuracy:.2f}")
"""),
        ("Fig. 7: the answer token across images and layers", """
features = answer_features(traces, step=0)  # [images, layers 1..L, d]
coords = project(features, "tsne", perplexity=35, seed=SEED)
notebook.show(plots.projection_plot(coords, answers, "answer token: images x layers (t-SNE)"), OUTPUT_DIR, "fig7_tsne")
notebook.show(plots.projection_plot(project(features, "umap", seed=SEED), answers, "UMAP"), OUTPUT_DIR, "fig7_umap")
spread = spread_by_layer(coords)
spread
"""),
    ],
    metrics="""
L = traces[0].n_layers
neck = float(spread.loc[1:3].min())
fan_layer = int(spread.idxmax())
fan = float(spread.max())
metrics = notebook.record({
    "n_images": len(vqa), "accuracy": accuracy, "n_layers": L, "neck_spread": neck,
    "fan_spread": fan, "fan_layer": fan_layer, "last_layer_spread": float(spread.loc[L]),
    "spread_by_layer": spread.round(3).tolist(),
    "claim_neck_then_fan": neck < 0.5 * fan and fan_layer > L // 2,
    "claim_last_layer_reclusters": float(spread.loc[L]) < fan,
}, OUTPUT_DIR)
print(f"Claim — shallow neck (spread {neck:.1f}) fanning out deep (max {fan:.1f} at layer {fan_layer}): "
      f"{'shown' if metrics['claim_neck_then_fan'] else 'NOT shown'} on {MODEL}.")
print(f"Claim — the last layer re-clusters (spread {float(spread.loc[L]):.1f} < {fan:.1f}): "
      f"{'shown' if metrics['claim_last_layer_reclusters'] else 'NOT shown'} on {MODEL}.")
metrics
""",
)

LVLM_VS_LLM = dict(
    name="07_lvlm_vs_llm",
    title="07 · LVLM vs its language model alone (paper §6)",
    claims=(
        "**Paper claim.** The same analyses on the text-only LLM show no clear hierarchy "
        "(critical split) and no mutations. By default the LLM is the same model's decoder "
        "run without an image; pass `-p LLM_MODEL lmsys/vicuna-7b-v1.5` for LLaVA's LLM."
    ),
    extra_params=(
        "LLM_MODEL = None  # None: the same model without images; or a causal LM id/folder\n"
        'LLM_PROMPTS = ["describe this image.", "please describe this image in detail.", '
        '"what colour is the boat?", "is there a fish in this image?"]\n'
    ),
    sections=[
        ("Trace the LVLM on images and the LLM on text", IMPORTS + """
lvlm_traces = [trace(lm, it.image, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM) for it in tqdm(items, desc="LVLM")]
llm = lm if LLM_MODEL is None else notebook.load(LLM_MODEL, QUANTIZATION, DEVICE)
llm_traces = [trace(llm, None, p, MAX_NEW_TOKENS, lens_norm=LENS_NORM) for p in tqdm(LLM_PROMPTS, desc="LLM")]
st_lvlm, st_llm = detect_stages(lvlm_traces), detect_stages(llm_traces)
pd.DataFrame({"LVLM": st_lvlm.summary(), "LLM": st_llm.summary()})
"""),
        ("Adjacent-layer JS of both", """
notebook.show(plots.js_curve(st_lvlm, {"LLM alone": st_llm.js_curve}), OUTPUT_DIR, "js_lvlm_vs_llm")
"""),
    ],
    metrics="""
ratio = {name: s.shallow_js / max(s.deep_js, 1e-12) for name, s in (("lvlm", st_lvlm), ("llm", st_llm))}
mutating = {name: s.summary()["tokens_with_mutation"] for name, s in (("lvlm", st_lvlm), ("llm", st_llm))}
metrics = notebook.record({
    "lvlm": st_lvlm.summary(), "llm": st_llm.summary(), "split_ratio": ratio,
    "tokens_with_mutation": mutating,
    "claim_llm_weaker_hierarchy": ratio["llm"] < ratio["lvlm"],
    "claim_llm_fewer_mutations": mutating["llm"] < mutating["lvlm"],
}, OUTPUT_DIR)
print(f"Claim — the LLM alone shows a weaker shallow/deep split (JS ratio {ratio['llm']:.0f}x vs "
      f"{ratio['lvlm']:.0f}x): {'shown' if metrics['claim_llm_weaker_hierarchy'] else 'NOT shown'} on {MODEL}.")
print(f"Claim — the LLM alone mutates less (tokens with a deep mutation {mutating['llm']:.2f} vs "
      f"{mutating['lvlm']:.2f}): {'shown' if metrics['claim_llm_fewer_mutations'] else 'NOT shown'} on {MODEL}.")
metrics
""",
)

APPLICATIONS = dict(
    name="08_applications",
    title="08 · Applications: compression and hallucination mitigation (paper §6)",
    claims=(
        "**Paper claims.** Stable layers can be skipped to compress the model; handling the "
        "mutation layers can reduce hallucinations. Measured here with the AMBER scorer on "
        "held-out images: quality and speed vs stable layers skipped, and plain decoding "
        "vs skip.2, a DoLa-style layer contrast, and an anchor to the last pre-mutation layer."
    ),
    n_images=24,
    extra_params="N_STAGE_IMAGES = 8  # images used to detect the stages\nSKIP_KS = [1, 2, 3]\n",
    sections=[
        ("Detect the stages", IMPORTS + """
from lvlm_kit.applications import compare_decoding, compression_sweep

amber = notebook.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)
questions = notebook.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED, queries="discriminative")
stage_traces = [trace(lm, amber.image_path(q), PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM)
                for q in tqdm(amber.queries[:N_STAGE_IMAGES], desc="trace")]
st = detect_stages(stage_traces)
print(f"critical layer {st.critical_layer}, mutation layers {st.mutation_layers}")
"""),
        ("Compression: skip the most stable layers", """
points = compression_sweep(lm, amber, st, SKIP_KS, questions, MAX_NEW_TOKENS)
notebook.show(plots.sweep_plot(points), OUTPUT_DIR, "compression_sweep")
pd.DataFrame([p.__dict__ for p in points])
"""),
        ("Hallucination mitigation: mutation layers and a DoLa-style baseline", """
decoding = compare_decoding(lm, amber, st, MAX_NEW_TOKENS)
notebook.show(plots.decoding_bars(decoding), OUTPUT_DIR, "decoding_variants")
pd.DataFrame({k: {m: v for m, v in r.items() if m != "responses"} for k, r in decoding.items()}).T
"""),
    ],
    metrics="""
table = {k: {m: v for m, v in r.items() if m != "responses"} for k, r in decoding.items()}
best = min(table, key=lambda k: table[k]["chair"])
metrics = notebook.record({
    "critical_layer": st.critical_layer, "mutation_layers": st.mutation_layers,
    "sweep": [p.__dict__ for p in points], "decoding": table, "lowest_chair": best,
}, OUTPUT_DIR)
for p in points[1:]:
    print(f"skip {p.k} stable layers: precision {p.object_precision:.2f}, recall {p.object_recall:.2f}"
          f" (k=0: {points[0].object_precision:.2f}, {points[0].object_recall:.2f}); speed-up "
          f"{p.speedup:.2f}x (ideal {p.ideal_speedup:.2f}x)")
print(f"Lowest CHAIR: {best} ({table[best]['chair']:.3f}) vs plain {table['plain']['chair']:.3f}, "
      f"Cover {table[best]['cover']:.2f} vs {table['plain']['cover']:.2f}.")
metrics
""",
)

SPECS = [QUICKSTART, TOKEN_PROBABILITIES, HALLUCINATION, JS_DIVERGENCE, SKIP, FEATURES_SINGLE,
         FEATURES_VQA, LVLM_VS_LLM, APPLICATIONS]  # fmt: skip
