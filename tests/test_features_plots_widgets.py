import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from lvlm_kit import plots, trace
from lvlm_kit.features import (
    answer_features,
    answer_words,
    coords_array,
    fan_profile,
    layer_spreads,
    path_linearity,
    project,
    question_panels,
    shallow_and_deep,
    spread_by_layer,
    token_features,
)
from lvlm_kit.stages import detect_stages
from lvlm_kit.widgets import TraceExplorer, token_summary, topk_table


@pytest.fixture(scope="module")
def tr(tiny_llava, image):
    return trace(tiny_llava, image, "Describe the image.", 8, keep_hidden=True)


@pytest.mark.slow
def test_features_and_projection(tr):
    f = token_features(tr)
    assert f.shape == (8, 4, 64)
    assert torch.equal(f[:, 0], tr.hidden[:, 1].float())
    for method in ("tsne", "umap"):
        coords = project(f, method, seed=0, max_iter=250)
        assert len(coords) == 32 and set(coords.layer) == {1, 2, 3, 4}
        again = project(f, method, seed=0, max_iter=250)
        np.testing.assert_allclose(coords[["x", "y"]], again[["x", "y"]])
    assert answer_features([tr, tr], step=2).shape == (2, 4, 64)
    with pytest.raises(ValueError, match="keep_hidden=True"):
        token_features(dataclasses.replace(tr, hidden=None))
    with pytest.raises(ValueError, match="method='pca' is unknown"):
        project(f, "pca")


def test_spread_and_linearity():
    import pandas as pd

    # Two items: both at the origin at layer 1, apart at layer 2; item 0 moves straight.
    coords = pd.DataFrame(
        {
            "item": [0, 0, 0, 1, 1, 1],
            "layer": [1, 2, 3] * 2,
            "x": [0, 1, 2, 0, 1, 0],
            "y": [0, 0, 0, 0, 1, 2],
        }
    )
    spread = spread_by_layer(coords)
    assert (
        spread[1] == 0
        and spread[2] == pytest.approx(0.5)
        and spread[3] == pytest.approx(np.sqrt(8) / 2)
    )
    lin = path_linearity(coords)
    assert lin[0] == pytest.approx(1.0) and lin[1] == pytest.approx(2 / (2 * np.sqrt(2)))
    # The array form is the same numbers, layer by layer.
    np.testing.assert_allclose(layer_spreads(coords_array(coords)), spread.to_numpy())
    shallow, deep = shallow_and_deep(spread, 1)  # layer 1; the deep half is layers 2..3
    assert shallow == 0 and deep == pytest.approx((0.5 + np.sqrt(8) / 2) / 2)


def test_the_fan_profile_and_its_recluster_rule():
    spread = pd.Series([1.0, 0.5, 2.0, 6.0, 5.0], index=pd.Index(range(1, 6), name="layer"))
    fan = fan_profile(spread)
    assert (fan.neck, fan.fan, fan.fan_layer, fan.last) == (0.5, 6.0, 4, 5.0)
    assert fan.reclusters  # 5 < 0.9 * 6
    assert not fan_profile(spread.replace(5.0, 5.5)).reclusters  # 5.5 > 5.4
    assert not fan_profile(spread.replace(5.0, 7.0)).reclusters  # the last layer is the widest


@pytest.mark.slow
def test_one_projection_per_question_and_the_answer_words(tr):
    traces = [tr] * 6
    panels = question_panels(traces, {"a": [0, 1, 2], "b": [3, 4, 5]}, seed=0)
    assert set(panels) == {"a", "b"} and all(len(c) == 3 * tr.n_layers for c in panels.values())
    alone = project(answer_features(traces[:3]), "tsne", 0, perplexity=35.0)
    np.testing.assert_allclose(panels["a"][["x", "y"]], alone[["x", "y"]])
    assert answer_words(traces[:2], step=1) == [tr.tokens[1].strip()] * 2


def test_plots_write_pngs(tr, tmp_path):
    st = detect_stages(tr)
    figs = {
        "probs": plots.token_probability_heatmap(tr, stages=st),
        "js": plots.js_heatmap(tr),
        "curve": plots.js_curve(st, {"other": st.js_curve}),
        "cands": plots.candidate_trajectories(tr, 1),
        "proj": plots.projection_plot(project(token_features(tr), max_iter=250), tr.tokens),
    }
    from PIL import Image

    for name, fig in figs.items():
        path = plots.save_figure(fig, tmp_path / "figs", name)
        png = np.asarray(Image.open(path).convert("L"), float)
        # a real picture: about the figure's size at 120 dpi (the tight bounding box trims
        # the margins, or takes in a title or colour bar that reaches past them)
        w, h = fig.get_size_inches() * 120
        assert 0.5 < png.shape[1] / w < 1.5 and 0.5 < png.shape[0] / h < 1.5, name
        assert png.std() > 10, f"{name} is blank"
    assert "final_norm" in figs["probs"].axes[0].get_title()


def test_means_are_drawn_with_confidence_intervals(tr):
    st = detect_stages(tr)
    ax = plots.js_curve(st, traces=[tr]).axes[0]
    band = [c for c in ax.collections if c.get_label() == "95% CI"]
    assert len(band) == 1
    mean, low, high = plots._js_mean_band([tr])
    np.testing.assert_allclose(mean, st.js_curve)
    assert (low <= mean + 1e-12).all() and (high >= mean - 1e-12).all() and (high > low).any()
    ys = band[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(low.min()) and ys.max() == pytest.approx(high.max())
    per_image = [{"nouns": n, "hallucinated": h} for n, h in ((2, 0), (8, 1), (4, 2), (2, 0))]
    ax = plots.decoding_bars({"plain": {"per_image": per_image}}).axes[0]
    bars = {round(p.get_height(), 4) for p in ax.patches if p.get_height() > 0}
    # CHAIR pooled as AMBER defines it, 3 / 16 (the mean of per-image CHAIR would be 0.156);
    # Hal the share of images with a hallucination, 2 / 4
    assert bars == {0.1875, 0.5}
    assert len(ax.lines) == 2  # one error bar per bar
    with pytest.raises(ValueError, match="per-image counts.*'pooled'"):
        plots.decoding_bars({"plain": {"per_image": per_image}, "pooled": {"chair": 0.1}})


def test_log_layer_lines_draw_an_exact_zero(tr):
    curves = {"a": np.array([[0.0, 1e-3, 1e-1], [0.0, 2e-3, 3e-1]])}
    ax = plots.layer_lines(curves, "KL", "t", log=True).axes[0]
    assert ax.get_yscale() == "symlog"
    drawn = ax.lines[0].get_ydata()
    np.testing.assert_allclose(drawn, [0.0, 1.5e-3, 0.2])  # layer 0 drawn at 0, not dropped
    assert ax.yaxis.get_transform().linthresh == pytest.approx(1e-3)


def test_topk_table_and_summary(tr):
    table = topk_table(tr, 3, k=3)
    assert list(table.columns) == ["top1", "top2", "top3", "p(emitted)", "rank(emitted)"]
    assert len(table) == tr.n_layers + 1
    assert table["rank(emitted)"].iloc[-1] == 0
    assert table["top1"].iloc[-1].startswith(repr(tr.tokens[3]))
    assert table["p(emitted)"].iloc[-1] == round(float(tr.token_prob[3, -1]), 4)
    assert token_summary(tr, 3).startswith(f"token 3: {tr.tokens[3]!r}")
    with pytest.raises(IndexError, match="out of range 0..7"):
        topk_table(tr, 8)


def test_explorer_follows_the_slider(tr):
    ex = TraceExplorer(tr, k=3)
    assert "token 0:" in ex.title.value
    ex.slider.value = 5
    assert "token 5:" in ex.title.value
    assert ex.table.value == topk_table(tr, 5, 3).to_html()
    assert ex.slider.max == 7
    drawn = ex.figure.axes[0].lines[0].get_ydata()
    np.testing.assert_allclose(drawn, tr.token_prob[5].numpy())


def test_every_figure_names_its_model_and_shows_relative_depth(tr):
    from types import SimpleNamespace

    from lvlm_kit.widgets import trajectory_figure

    st = detect_stages(tr)
    name = tr.model_name
    point = SimpleNamespace(
        k=0,
        object_precision=1.0,
        object_recall=1.0,
        chair=0.0,
        hal=0.0,
        existence_accuracy=None,
        existence_correct=None,
        speedup=1.0,
        ideal_speedup=1.0,
        tokens_per_second=1.0,
        skipped=[],
    )
    lensed = {
        "probs": plots.token_probability_heatmap(tr, stages=st),
        "js": plots.js_heatmap(tr),
        "curve": plots.js_curve(st, traces=[tr]),
        "cands": plots.candidate_trajectories(tr, 1),
        "lines": plots.layer_lines(
            {"a": np.ones((2, tr.n_layers + 1))}, "v", "t", model=name, lens=tr.lens_norm
        ),
        "widget": trajectory_figure(tr, 0),
    }
    for key, fig in lensed.items():
        title = fig.axes[0].get_title()
        assert name in title and tr.lens_norm in title, key
    others = {
        "proj": plots.projection_plot(
            project(token_features(tr), max_iter=250), tr.tokens, "p", model=name
        )
        .axes[0]
        .get_title(),
        "bars": plots.decoding_bars(
            {"plain": {"per_image": [{"nouns": 2, "hallucinated": 1}]}}, model=name
        )
        .axes[0]
        .get_title(),
        "sweep": plots.sweep_plot([point], model=name)._suptitle.get_text(),
    }
    for key, title in others.items():
        assert name in title, key
    # A top axis in relative depth: layer L sits at 1.0 (heatmaps: the centre of its cell).
    for key, at_last in (
        ("probs", tr.n_layers + 0.5),
        ("curve", tr.n_layers),
        ("cands", tr.n_layers),
        ("lines", tr.n_layers),
        ("widget", tr.n_layers),
    ):
        top = [
            c for c in lensed[key].axes[0].child_axes if c.get_xlabel() == "relative depth j / L"
        ]
        assert len(top) == 1, key
        assert top[0]._functions[0](at_last) == pytest.approx(1.0), key


def test_extra_js_curves_given_as_traces_get_bands_and_stages_hatches(tr):
    from matplotlib.collections import PolyCollection

    st = detect_stages(tr)
    ax = plots.js_curve(st, {"other": [tr], "values": st.js_curve}, traces=[tr]).axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # the main curve's and the traced extra curve's, not the values'
    assert [p.get_hatch() for p in ax.patches][:1] == ["//"]  # rapid evolution, hatched


def test_figures_read_like_the_papers(tr):
    from matplotlib.ticker import MaxNLocator

    st = dataclasses.replace(detect_stages(tr), critical_layer=1, mutation_layers=[3])
    ax = plots.js_curve(st, traces=[tr], label="LVLM").axes[0]
    spans = {p.get_label(): p for p in ax.patches if not p.get_label().startswith("_")}
    assert set(spans) == {"rapid evolution", "stabilisation", "mutation"}
    mutation = [p for p in ax.patches if p.get_facecolor() == spans["mutation"].get_facecolor()]
    assert len(mutation) == 1  # the one mutation layer, not everything after it
    assert (mutation[0].get_x(), mutation[0].get_width()) == (2.5, 1.0)
    assert "LVLM" in [t.get_text() for t in ax.get_legend().get_texts()]
    ax = plots.probability_curve([tr, tr], st).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "mean p(emitted token)",
        "95% CI (images)",
        "critical layer 1",
        "mutation layers",
    ]
    coords = pd.DataFrame(
        [
            {"item": i, "layer": j, "x": float(i), "y": float(j)}
            for i in range(4)
            for j in range(1, 4)
        ]
    )
    ax = plots.projection_plot(coords, ["small", "small", "red", "small"]).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["red", "small"]  # each word once
    fig = plots.projection_panels(
        {"q1": coords, "q2": coords}, {"q1": list("abcd"), "q2": list("abcd")}
    )
    assert [a.get_title() for a in fig.axes[:2]] == ["q1", "q2"]
    ax = plots.layer_lines(
        {"nf4": np.array([[0.0, 0.01, 0.02]] * 3)}, "KL", "t", log=True, references={"margin": 0.1}
    ).axes[0]
    assert ax.get_ylim()[0] == 0 and any(line.get_label() == "margin" for line in ax.lines)
    from types import SimpleNamespace as P

    points = [
        P(
            k=k,
            object_precision=0.9,
            object_recall=0.8,
            existence_accuracy=0.9,
            existence_correct={"a": [True], "b": [k < 2]},
            speedup=1 + k / 10,
            ideal_speedup=12 / (12 - k),
        )
        for k in (0, 1, 2)
    ]
    fig = plots.sweep_plot(points)
    assert all(isinstance(a.xaxis.get_major_locator(), MaxNLocator) for a in fig.axes)
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())


def test_the_js_heatmap_marks_the_stages_and_the_bars_carry_the_texts(tr):
    st = dataclasses.replace(detect_stages(tr), critical_layer=1, mutation_layers=[3])
    ax = plots.js_heatmap(tr, stages=st).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "critical layer 1",
        "into a mutation layer",
    ]
    per_image = [{"nouns": 2, "hallucinated": 1}] * 3
    fig = plots.decoding_bars(
        {"plain": {"per_image": per_image}, "skip2": {"per_image": per_image}},
        texts={"plain": "a red boat.", "skip2": "a boat."},
    )
    assert "plain: a red boat.\nskip2: a boat." in [t.get_text() for t in fig.axes[1].texts]
