"""Report section of the SAE lens: reconstruction, concept-feature survival heatmap, restoration."""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from audit.lensdata import SAEData, SAEQuality, lens_data
from audit.schema import LensResult
from reports.fmt import finite, num, pct
from reports.render import ROLE_COLORS, Page, section

ROLE_NAMES = {"base": "B (base)", "unlearned": "U (unlearned)", "reference": "N (reference)"}
BAND = "rgba(127,127,127,0.25)"


def _heatmap(d: SAEData) -> go.Figure:
    feats = d.concept_features
    roles = [r for r in ("base", "unlearned", "reference") if f"survival_{r}" in (feats[0].extras() if feats else {})]
    z = [[f.extras()[f"survival_{r}"] for r in roles] for f in feats]
    text = [[num(v) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=[[None if finite(v) is None else min(v, 2.0) for v in row] for row in z],
        x=[ROLE_NAMES[r] for r in roles], y=[f"f{f.feature}" for f in feats], text=text,
        texttemplate="%{text}", zmin=0, zmax=2, colorscale="RdBu", zmid=1,
        colorbar={"title": "survival"},
        customdata=[[f"forget rate {num(f.forget_rate)}, retain rate {num(f.retain_rate)}"] * len(roles)
                    for f in feats],
        hovertemplate="%{y} in %{x}: survival %{text}<br>%{customdata}<extra></extra>",
    ))
    fig.update_layout(title=f"Concept-feature survival at {d.hook} (mean code on forget prompts / B's; "
                            "colour capped at 2)", height=max(320, 22 * len(feats) + 140),
                      yaxis={"autorange": "reversed"})
    return fig


def _dose(d: SAEData) -> go.Figure:
    curve = d.dose_response
    xs = [0.0] + [r.scale for r in curve]
    un = d.unrestored
    if un is None:
        raise ValueError("the SAE lens's data has a dose_response but no unrestored scores")
    base_u = un.forget.get("unlearned")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["restored U: forget score", "U: retain accuracy"])
    lo = [base_u] + [r.control_p5 for r in curve]
    hi = [base_u] + [r.control_p95 for r in curve]
    fig.add_trace(go.Scatter(x=xs, y=lo, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=xs, y=hi, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=BAND,
                             name="frequency-matched random features p5–p95"), row=1, col=1)
    fig.add_trace(go.Scatter(x=xs, y=[base_u] + [r.score for r in curve], mode="lines+markers",
                             line={"color": ROLE_COLORS["unlearned"]}, name="concept features"), row=1, col=1)
    for role in ("base", "reference"):
        y = un.forget.get(role)
        if y is not None:
            fig.add_hline(y=y, line_dash="dot", line_color=ROLE_COLORS[role], row=1, col=1)
    fig.add_trace(go.Scatter(x=xs, y=[un.retain_accuracy_unlearned] + [r.retain_accuracy for r in curve],
                             mode="lines+markers", line={"color": ROLE_COLORS["unlearned"], "dash": "dash"},
                             name="retain accuracy"), row=1, col=2)
    fig.update_xaxes(title_text="scale (× fitted mean code shift)")
    fig.update_layout(title="SAE feature restoration dose–response (each item scored out of fold)", height=420,
                      legend={"orientation": "h", "y": -0.25})
    return fig


def _corpus_text(q: SAEQuality) -> str:
    c = q.corpus
    src = c.source
    if src == "self-generated":
        return (f"the base model's own text: {num(c.tokens, 'd')} tokens sampled (T {num(c.temperature, 'g')}, "
                f"top-p {num(c.top_p, 'g')}) from {num(c.n_openers, 'd')} "
                f"{'generic openers' if c.openers == 'generic' else 'openers taken from the items'}, "
                "and the audit prompts")
    if src == "text files":
        return f"{num(c.lines, 'd')} lines of text files ({', '.join(c.files)}) and the audit prompts"
    return src


def _quality(d: SAEData) -> str:
    """The SAE's quality, first: a poor SAE makes everything below it uninformative."""
    e = html.escape
    q = d.quality
    ok = q.ok
    thr = q.min_explained_variance
    verdict = ("<b style='color:#2ca02c'>good enough to inform the verdict</b>" if ok else
               "<b class='bad'>below the minimum: the lens is uninformative</b>")
    where = "held-out sequences" if q.held_out else "the audit prompts"
    rows = [
        ("explained variance", f"{num(q.explained_variance, '.3f')} (minimum {num(thr, 'g')}) — {verdict}"),
        ("dead features", f"{pct(q.dead_fraction, '.1f')}% (no activation on "
                          f"{e(str(q.dead_measured_on or where))})"
         if q.dead_fraction is not None else "—"),
        ("L0", num(q.l0, ".1f")),
        ("SAE", f"{e(str(q.architecture))}, {q.d_sae} features, {e(str(q.source))}, at "
                f"<code>{e(str(d.hook))}</code>"),
        ("trained on", (f"{num(q.n_train_tokens, 'd')} tokens: {e(_corpus_text(q))}"
                        if q.n_train_tokens else "pretrained (loaded from disk)")),
        ("measured on", f"{num(q.n_tokens, 'd')} tokens of {where}"),
    ]
    table = "<table class='quality'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    ex = q.corpus.examples
    if ex:
        table += ("<details><summary>corpus samples</summary><ul>" + "".join(f"<li>{e(str(x))}</li>" for x in ex)
                  + "</ul></details>")
    return "<h3>SAE quality</h3>" + table


def _summary(res: LensResult, d: SAEData) -> str:
    parts = [_quality(d)]
    if not d.concept_features:
        return "".join(parts)
    total = d.survival.total if d.survival else {}
    parts += [
        f"<p>{len(d.concept_features)} concept features: mean per-prompt code on forget prompts "
        f"{num(d.selectivity.get('forget_mean'), '.3f')} vs retain {num(d.selectivity.get('retain_mean'), '.3f')}. "
        "Total survival: " + ", ".join(f"{ROLE_NAMES[r]} {num(v)}" for r, v in total.items())
        + ".</p>",
    ]
    if res.recoveries:
        r = res.recoveries[0]
        drop = d.restored.retain_drop if d.restored else None
        parts.append(f"<p>Restoration recovery {num(r.value)} (CI {num(r.ci_low)}–{num(r.ci_high)}); random "
                     f"feature sets' 95th percentile {num(r.control_threshold)}, excess {num(r.excess)}; retain "
                     f"drop {num(drop)}. Scales chosen per fold: "
                     + ", ".join(f"fold {c.fold} ×{num(c.scale, 'g')}" for c in d.chosen) + ".</p>")
    return "".join(parts)


@section("sae")
def sae_section(page: Page, res: LensResult) -> None:
    """SAE reconstruction quality, concept-feature survival heatmap, restoration dose–response."""
    d = lens_data(res, SAEData)
    body = _summary(res, d)
    if d.concept_features:
        body += page.figure(_heatmap(d), "Each concept feature's mean per-prompt code on forget prompts, as a share "
                            "of the base model's (1 = fully present; U's and N's activations encoded with B's SAE).")
    if d.dose_response:
        body += page.figure(_dose(d), "Forget score of U when its concept-feature codes are moved by the fitted "
                            "mean shift × scale (error term kept), against frequency-matched random feature sets "
                            "(grey band); dotted: unrestored base and reference. Right: retain accuracy.")
    page.section("SAE concept features", body, "sae")
