"""Report section of the membership-inference lens: ROC curves per model and the recovery (plotly; no torch)."""

from __future__ import annotations

import plotly.graph_objects as go

from audit.lensdata import MiaData, lens_data
from audit.schema import LensResult
from reports.fmt import finite, num
from reports.render import ROLE_COLORS, Page, e, section

ROLE_NAMES = {"base": "B (base)", "unlearned": "U (unlearned)", "reference": "N (reference)"}


def _name(role: str) -> str:
    return ROLE_NAMES.get(role, f"N ({role})")


def _roc(d: MiaData) -> go.Figure:
    fig = go.Figure()
    for role, curve in d.roc.items():
        if not curve.fpr:
            continue
        color = ROLE_COLORS.get(role, ROLE_COLORS["reference"])
        fig.add_trace(go.Scatter(x=curve.fpr, y=curve.tpr, mode="lines", line={"color": color},
                                 name=f"{_name(role)}: AUC {num(curve.auc)}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#bbb", "dash": "dot"},
                             name="exchangeable (0.5)", hoverinfo="skip"))
    fig.update_layout(title=f"{d.primary or 'Min-K%++'}: member vs answer-swapped texts (item-centred)",
                      xaxis_title="false-positive rate (counterfactual texts called members)",
                      yaxis_title="true-positive rate (true texts called members)", height=440,
                      xaxis={"range": [0, 1]}, yaxis={"range": [0, 1]}, legend={"orientation": "h", "y": -0.25})
    return fig


def _table(d: MiaData, res: LensResult) -> str:
    recs = {r.reading: r for r in res.recoveries}
    roles = d.roles or list(next(iter(d.score.values()), {}))
    head = "".join(f"<th>{e(_name(r))}</th>" for r in roles)
    rows = []
    for stat, per in d.score.items():
        r = next((x for name, x in recs.items() if name.startswith(stat + " ")), None)
        rec = "" if r is None else f"{num(r.value)} ({num(r.ci_low)} to {num(r.ci_high)})"
        ctrl = "" if r is None or r.control_threshold is None else num(r.control_threshold)
        ret = d.retain_score.get(stat, {})
        cells = "".join(f"<td>{num(per.get(role))} / {num(ret.get(role))}</td>" for role in roles)
        rows.append(f"<tr><td>{e(stat)}{' (primary)' if d.primary.startswith(stat + ' ') else ''}</td>{cells}"
                    f"<td>{rec}</td><td>{ctrl}</td></tr>")
    return ("<table><tr><th>statistic</th>" + head + "<th>recovery (95% CI)</th><th>control p95</th></tr>"
            + "".join(rows) + "</table><p class='cap'>Cells: paired AUC on forget / retain items (0.5: a model "
            "that cannot tell true from answer-swapped texts). Support only: the verdict reads none of these.</p>")


@section("mia")
def mia_section(page: Page, res: LensResult) -> None:
    d = lens_data(res, MiaData)
    if not d.score:
        return
    body = _table(d, res)
    if any(c.fpr for c in d.roc.values()):
        body += page.figure(_roc(d), "Each text's statistic minus the mean of its item's texts, so the curve reads "
                                     "the paired comparison rather than which prompts are easy.")
    prim = next((r for r in res.recoveries if r.reading == d.primary), None)
    if prim is not None and finite(prim.value) is not None:
        body += (f"<p>Primary recovery {num(prim.value)} (CI {num(prim.ci_low)} to {num(prim.ci_high)}), "
                 f"{'informative' if prim.informative else 'uninformative'}"
                 + (f"; shuffled-label control p95 {num(prim.control_threshold)}" if prim.control_threshold
                    is not None else "") + ".</p>")
    body += "".join(f"<p class='cap'>{e(n)}</p>" for n in res.notes)
    page.section("Membership inference (support only)", body, "mia")
