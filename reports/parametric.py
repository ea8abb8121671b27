"""Report section of the parametric-traces lens (support only)."""

from __future__ import annotations

from plotly.subplots import make_subplots

from audit.lensdata import ParametricData, lens_data
from audit.schema import LensResult
from reports.fmt import num
from reports.render import ROLE_COLORS, Page, e, section


@section("parametric")
def _parametric(page: Page, res: LensResult) -> None:
    d = lens_data(res, ParametricData)
    if not d.per_layer:
        return
    fig = make_subplots(rows=1, cols=3, subplot_titles=[
        "answer wins, each layer's vectors alone", "where the answer-writing vectors sit",
        "B's answer-writing vectors kept (cosine)"])
    for role, ys in d.per_layer.items():
        color = ROLE_COLORS.get(role, "#000")
        x = list(range(len(ys)))
        fig.add_scatter(x=x, y=ys, mode="lines+markers", name=role, legendgroup=role, line={"color": color},
                        row=1, col=1)
        share = d.layer_share.get(role)
        if share:
            fig.add_bar(x=list(range(len(share))), y=share, name=role, legendgroup=role, showlegend=False,
                        marker_color=color, row=1, col=2)
    for role, s in d.survival.items():
        color = ROLE_COLORS.get(role, "#000")
        x = list(range(len(s.per_layer_selected)))
        fig.add_scatter(x=x, y=s.per_layer_selected, mode="lines+markers", name=f"{role}: answer-writing",
                        legendgroup=role, showlegend=False, line={"color": color}, row=1, col=3)
        fig.add_scatter(x=x, y=s.per_layer_random, mode="lines", name=f"{role}: matched random",
                        legendgroup=role, showlegend=False, line={"color": color, "dash": "dot"}, row=1, col=3)
    if d.chance is not None:
        fig.add_hline(y=d.chance, line_dash="dot", line_color="#999", row=1, col=1)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="layer", dtick=1, row=1, col=col)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(range=[-0.1, 1.05], row=1, col=3)
    fig.update_layout(title="Parametric traces: MLP value vectors that write the answer (B / U / N; support only)",
                      height=400, barmode="group")
    rows = "".join(
        f"<tr><td>{e(role)}</td><td>{num(d.scores.get('weighted', {}).get(role))}</td>"
        f"<td>{num(d.scores.get('weights_only', {}).get(role))}</td><td>{num(d.retain_scores.get(role))}</td>"
        f"<td>{num(d.survival[role].selected) if role in d.survival else ''}</td>"
        f"<td>{num(d.survival[role].random) if role in d.survival else ''}</td>"
        f"<td>{num(d.survival[role].contest) if role in d.survival else ''}</td></tr>"
        for role in d.scores.get("weighted", {}))
    table = ("<table><tr><th>model</th><th>answer wins (weighted)</th><th>value vectors alone</th>"
             "<th>retain (weighted)</th><th>cos at B's answer-writing vectors</th><th>cos at matched random</th>"
             "<th>B's vectors' contest in its weights</th></tr>" + rows + "</table>")
    page.section("Parametric traces (support only)", page.figure(
        fig, f"Each MLP value vector's direct logit on the item's candidates' first tokens (final norm's gain and "
             f"unembedding), weighted by its activation at the prompt's last token; a candidate's strength is "
             f"the sum of its top-{d.top_k} vectors; left: share of {d.n_items} forget items whose answer is "
             "strongest using one layer's vectors (dotted: chance); middle: the layers of each model's own "
             "answer-writing vectors; right: cosine of U's and N's value vectors to B's at B's answer-writing "
             "indices (solid) and at matched random indices (dotted). A model derived from B keeps most vectors "
             "whether or not they stored facts: only solid below dotted says unlearning touched them. Support "
             "only: never read by the verdict.") + table, "parametric")
