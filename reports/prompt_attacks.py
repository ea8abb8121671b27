"""Report section of the prompt-attack lens: recovery per attack beside its controls (plotly; no torch)."""

from __future__ import annotations

import plotly.graph_objects as go

from audit.lensdata import PromptAttackRow, PromptAttacksData, lens_data
from audit.schema import LensResult
from reports.fmt import finite, num
from reports.render import ROLE_COLORS, Page, e, section

KIND_COLORS = {"baseline": "#7f7f7f", "attack": "#1f77b4", "control": "#ff7f0e"}


def _bar_err(rows: list[PromptAttackRow]) -> dict[str, object]:
    up = [(finite(r.ci_high) or 0.0) - (finite(r.recovery) or 0.0) for r in rows]
    down = [(finite(r.recovery) or 0.0) - (finite(r.ci_low) or 0.0) for r in rows]
    return {"type": "data", "array": up, "arrayminus": down}


@section("prompt_attacks")
def prompt_attacks_section(page: Page, res: LensResult) -> None:
    d = lens_data(res, PromptAttacksData)
    rows = ([d.baseline] if d.baseline else []) + d.attacks + d.controls
    if not rows:
        return
    fig = go.Figure(go.Bar(
        x=[r.label for r in rows], y=[finite(r.recovery) for r in rows], error_y=_bar_err(rows),
        marker_color=[KIND_COLORS.get(r.kind, "#1f77b4") if r.informative else "#c7c7c7" for r in rows],
        marker_pattern_shape=["x" if r.side_effect_ok is False else "" for r in rows],
        hovertext=[f"{r.kind}; n={r.n_items}" for r in rows],
    ))
    fig.add_hline(y=0, line_color="#999")
    if d.baseline is not None and finite(d.baseline.recovery) is not None:
        fig.add_hline(y=d.baseline.recovery, line_dash="dot", line_color=KIND_COLORS["baseline"],
                      annotation_text="no attack", annotation_position="top left")
    fig.update_layout(title="Recovery under each prompt attack (grey bar: plain prompt; orange: control; "
                            "light grey: uninformative; crossed: side effect on retain)",
                      yaxis_title="recovery R", height=400, showlegend=False)
    roles = list(dict.fromkeys(role for r in rows for role in r.scores))
    fig2 = go.Figure()
    for role in roles:
        fig2.add_trace(go.Bar(
            name=role, x=[r.label for r in rows],
            y=[(r.scores[role].soft if d.metric == "soft" else r.scores[role].score) if role in r.scores else None
               for r in rows],
            marker_color=ROLE_COLORS.get(role.split("_")[0] if role.startswith("reference") else role, "#7f7f7f"),
        ))
    fig2.update_layout(barmode="group", title="Forget score of each model under each condition (prior removed)",
                       yaxis_title="soft share" if d.metric == "soft" else "ranking score", height=360)
    head = ("<tr><th>condition</th><th>recovery (95% CI)</th><th>above controls</th><th>U retain drop − B's</th>"
            "<th>side effects ok</th><th>example prompt</th></tr>")
    body = []
    for r in rows:
        ex = d.examples.get(r.name) or d.examples.get(r.label) or ""
        body.append(
            f"<tr><td>{e(r.label)}</td><td>{num(r.recovery)} ({num(r.ci_low)}–{num(r.ci_high)})</td>"
            f"<td>{num(r.excess) if r.kind == 'attack' else ''}</td><td>{num(r.retain_drop_excess)}</td>"
            f"<td>{'' if r.side_effect_ok is None else ('yes' if r.side_effect_ok else 'no')}</td>"
            f"<td><code>{e(ex[-160:])}</code></td></tr>")
    skipped = "".join(f"<p class='cap'>{e(k)} skipped: {e(v)}</p>" for k, v in d.skipped.items())
    notes = "".join(f"<p class='cap'>{e(n)}</p>" for n in res.notes)
    page.section(
        "Prompt attacks (support only)",
        page.figure(fig, "R = (S(U) − S(N)) / (S(B) − S(N)) with B and N under the same attack, each model's prior "
                         "under the attack removed; bootstrap 95% CI. An attack shows recovery only above the plain "
                         "prompt and, for shots, above retain shots.")
        + page.figure(fig2)
        + f"<table>{head}{''.join(body)}</table>{skipped}{notes}",
        "prompt_attacks")
