"""Report section of the steering lens: dose–response with the random-direction band."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from audit.lensdata import SteeringData, SteeringRow, lens_data
from audit.schema import LensResult
from reports.fmt import finite, num, signed
from reports.render import ROLE_COLORS, Page, policy_value, section

DIRECTION_COLORS = {"base_minus_unlearned": "#9467bd", "forget_minus_retain": "#2ca02c", "random": "#8c564b"}
POOL_DASH = {"last": "solid", "mean": "dash", "-": "dot"}
BAND = "rgba(127,127,127,0.25)"


def side_effect_tolerance(d: SteeringData, policy: Mapping[str, Any] | None) -> float:
    """The retain-drop tolerance the lens applied: its own record, else the run's policy's
    (``side_effect_tolerance``, which the run hands the lens unless its options set one)."""
    own = finite(d.side_effect_tolerance)
    return own if own is not None else float(policy_value(policy, "side_effect_tolerance"))


def _figure(d: SteeringData, tolerance: float) -> go.Figure:
    curve = d.dose_response
    sites = [s for s in d.sites if any(r.site == s for r in curve)]
    labels = {r.site: r.site_label for r in curve}
    scales = sorted({r.scale for r in curve if r.form == "add"} | {0.0})
    cats = (["ablate"] if any(r.form == "ablate" for r in curve) else []) + [signed(s) for s in scales]
    base_u = d.unsteered.forget.get("unlearned")
    base_ret = d.unsteered.retain_accuracy_unlearned
    fig = make_subplots(rows=2, cols=len(sites), shared_yaxes=True, shared_xaxes=True, vertical_spacing=0.08,
                        horizontal_spacing=0.02, subplot_titles=[labels[s] for s in sites])
    shown: set[str] = set()
    for col, site in enumerate(sites, start=1):
        rows = [r for r in curve if r.site == site]
        first = col == 1
        # control band: shared by every direction at a site and |scale|
        band = {(r.form, abs(r.scale)): r for r in rows}
        xs = [s for s in scales if s == 0 or ("add", abs(s)) in band]
        add_x = [signed(s) for s in xs]
        lo, mid, hi = ([base_u if s == 0 else getattr(band[("add", abs(s))], f"control_{q}") for s in xs]
                       for q in ("p5", "p50", "p95"))
        fig.add_trace(go.Scatter(x=add_x, y=lo, mode="lines", line={"width": 0}, showlegend=False,
                                 hoverinfo="skip", legendgroup="controls"), row=1, col=col)
        fig.add_trace(go.Scatter(x=add_x, y=hi, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=BAND,
                                 name="random controls p5–p95", showlegend=first, legendgroup="controls"),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=add_x, y=mid, mode="lines", line={"color": "grey", "dash": "dot", "width": 1},
                                 name="random controls median", showlegend=first, legendgroup="controls_mid"),
                      row=1, col=col)
        if ("ablate", 0.0) in band:
            r = band[("ablate", 0.0)]
            fig.add_trace(go.Scatter(
                x=["ablate"], y=[r.control_p50], mode="markers", marker={"color": "grey", "symbol": "line-ew-open",
                                                                        "size": 14},
                error_y={"type": "data", "symmetric": False, "array": [r.control_p95 - r.control_p50],
                         "arrayminus": [r.control_p50 - r.control_p5], "color": "grey", "thickness": 6},
                showlegend=False, legendgroup="controls", hoverinfo="skip"), row=1, col=col)
        for key in sorted({(r.direction, r.pooling) for r in rows}):
            name = key[0] if key[0] == "random" else f"{key[0]} ({key[1]})"
            style = {"color": DIRECTION_COLORS.get(key[0], "#333"), "dash": POOL_DASH.get(key[1], "solid")}
            mine = [r for r in rows if (r.direction, r.pooling) == key]
            # (scale, score, retain accuracy) of each additive setting, and the unsteered U at 0
            adds = sorted([(r.scale, r.score, r.retain_accuracy) for r in mine if r.form == "add"]
                          + [(0.0, base_u, base_ret)], key=lambda a: a[0])
            abl: list[SteeringRow] = [r for r in mine if r.form == "ablate"]
            for row, field in ((1, 1), (2, 2)):
                fig.add_trace(go.Scatter(x=[signed(a[0]) for a in adds], y=[a[field] for a in adds],
                                         mode="lines+markers", line=style, name=name, legendgroup=name,
                                         showlegend=name not in shown), row=row, col=col)
                shown.add(name)
                if abl:
                    ya = abl[0].score if field == 1 else abl[0].retain_accuracy
                    fig.add_trace(go.Scatter(x=["ablate"], y=[ya], mode="markers",
                                             marker={"color": style["color"], "size": 9,
                                                     "symbol": "x" if key[1] == "mean" else "circle"},
                                             name=name, legendgroup=name, showlegend=False), row=row, col=col)
        for role in ("base", "reference"):
            y = d.unsteered.forget.get(role)
            if y is not None:
                fig.add_hline(y=y, line_dash="dot", line_color=ROLE_COLORS[role], row=1, col=col)
        fig.add_hline(y=base_ret - tolerance, line_dash="dot", line_color="#d62728",
                      row=2, col=col)
        fig.update_xaxes(categoryorder="array", categoryarray=cats, row=1, col=col)
        fig.update_xaxes(categoryorder="array", categoryarray=cats, title_text="scale (× residual norm)", row=2,
                         col=col)
    metric = d.metric
    fig.update_yaxes(title_text=f"steered U: forget score ({metric})", row=1, col=1)
    fig.update_yaxes(title_text="retain accuracy", row=2, col=1)
    fig.update_layout(title="Steering dose–response (each item scored out of fold)", height=640,
                      legend={"orientation": "h", "y": -0.18})
    return fig


def _table(res: LensResult, d: SteeringData) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{c.fold}</td><td>{e(c.label)}</td><td>{c.n_items}</td>"
        f"<td>{num(c.other_folds_score_excess)}</td><td>{num(c.other_folds_retain_drop)}</td></tr>"
        for c in d.chosen
    )
    by_role = d.steered.extras() if d.steered else {}
    parts = [f"U {num(by_role.get('unlearned'))}", f"B {num(by_role.get('base'))}"]
    if "reference" in by_role:
        parts.append(f"N {num(by_role['reference'])}")
    summary = ""
    if res.recoveries:
        r = res.recoveries[0]
        ok = {True: "within tolerance", False: "<b class='bad'>over tolerance: does not count</b>", None: "—"}
        summary = (f"<p>Recovery {num(r.value)} (CI {num(r.ci_low)}–{num(r.ci_high)}); random-direction "
                   f"95th percentile {num(r.control_threshold)}, excess {num(r.excess)}; retain drop "
                   f"{num(d.steered.retain_drop if d.steered else None)} ({ok[r.side_effect_ok]}).</p>")
    return (summary + f"<p>Steered scores on held-out folds: {', '.join(parts)}.</p>"
            "<table><tr><th>fold</th><th>setting chosen on the other folds</th><th>items</th>"
            f"<th>score above controls' p95 there</th><th>retain drop there</th></tr>{rows}</table>")


@section("steering")
def steering_section(page: Page, res: LensResult) -> None:
    """Dose–response per site: steered U per candidate direction, the control band, retain."""
    d = lens_data(res, SteeringData)
    body = _table(res, d)
    if d.dose_response:
        fig = _figure(d, side_effect_tolerance(d, page.policy))
        body = page.figure(fig, "Knowledge score of U with one item-agnostic direction added (lines) or "
                           "ablated (markers at 'ablate'), per site; grey: norm-matched random directions "
                           "(p5–p95, median dotted); dotted lines: unsteered base and reference. Bottom: U's "
                           "retain accuracy under the same intervention (red: the side-effect tolerance).") + body
    page.section("Steering restoration", body, "steering")
