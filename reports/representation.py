"""Report sections of the representation lenses: probe, logit lens, similarity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from audit.lensdata import LinearProbeData, LogitLensData, SimilarityData, lens_data
from audit.schema import LensResult
from reports.render import ROLE_COLORS, Page, section


def _layer_curves(title: str, panels: Mapping[str, Mapping[str, Sequence[float | None]]], chance: float | None,
                  ytitle: str) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels), shared_yaxes=True)
    for col, (_, per_role) in enumerate(panels.items(), start=1):
        for role, ys in per_role.items():
            fig.add_scatter(x=list(range(len(ys))), y=ys, mode="lines+markers", name=role, legendgroup=role,
                            showlegend=col == 1, line={"color": ROLE_COLORS.get(role, "#000")}, row=1, col=col)
        if chance is not None:
            fig.add_hline(y=chance, line_dash="dot", line_color="#999", row=1, col=col)
        fig.update_xaxes(title_text="layer", dtick=1, row=1, col=col)
    fig.update_yaxes(title_text=ytitle, range=[0, 1.05], row=1, col=1)
    fig.update_layout(title=title, height=380)
    return fig


@section("linear_probe")
def _probe(page: Page, res: LensResult) -> None:
    d = lens_data(res, LinearProbeData)
    m = d.metric
    schemes = [s for s in ("transfer", "crossfit") if f"{s}_{m}" in d.per_layer]  # transfer may be skipped
    panels = {f"{s} ({m})": d.per_layer[f"{s}_{m}"] for s in schemes}
    panels.update({f"{s} (accuracy)": d.per_layer[f"{s}_accuracy"] for s in schemes})
    fig = _layer_curves("Linear probe per layer (B / U / N)", panels, d.chance, "probe knowledge score")
    page.section("Linear probe", page.figure(
        fig, "Transfer: fit on retain items, score forget items. Crossfit: K folds within forget items grouped "
             "by subject. Dotted: chance."), "linear_probe")


@section("logit_lens")
def _logit(page: Page, res: LensResult) -> None:
    d = lens_data(res, LogitLensData)
    if not all(m in d.per_layer for m in ("soft", "accuracy", "topk")):  # nothing to draw
        return
    panels = {"answer's share (soft)": d.per_layer["soft"], "ranked first": d.per_layer["accuracy"]}
    if d.per_layer_base_head.get("soft"):
        panels["through B's head (soft)"] = d.per_layer_base_head["soft"]
    panels[f"first token in top-{d.top_k}"] = d.per_layer["topk"]
    fig = _layer_curves("Logit lens per layer (B / U / N)", panels, d.chance, "score")
    page.section("Logit lens", page.figure(
        fig, "Each layer's residual through the model's own final norm and unembedding, every candidate "
             "teacher-forced (its tokens' log-probs summed); at the last layer this is the behaviour score. "
             "'Through B's head': every model's residuals read through B's final norm and unembedding, which a "
             "suppression placed in U's own head cannot hide. Dotted: chance."),
        "logit_lens")


@section("similarity")
def _cka(page: Page, res: LensResult) -> None:
    fig = go.Figure()
    for key, ys in lens_data(res, SimilarityData).curves().items():
        fig.add_scatter(x=list(range(len(ys))), y=ys, mode="lines+markers", name=key.replace("_", " "),
                        line={"dash": "dot" if key.startswith("retain") else "solid"})
    fig.update_layout(title="Linear CKA per layer (support only)", xaxis_title="layer", yaxis_title="CKA",
                      yaxis_range=[0, 1.05], height=360)
    page.section("Similarity (CKA)", page.figure(
        fig, "Support only: CKA compares activations, so a suppression that moves every hidden state (the "
             "subject-offset organism) looks 'erased' here. It never decides a verdict."), "similarity")
