"""Report sections of the attack lenses: quantization, relearn and leak@k (plotly; no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from audit.lensdata import LeakAtKData, QuantizationData, QuantSetting, RelearnData, RelearnRow, lens_data
from audit.schema import LensResult
from reports.fmt import finite, num
from reports.render import ROLE_COLORS, Page, e, section

ROLES = ("base", "unlearned", "reference")


def _err(rows: Sequence[QuantSetting | RelearnRow]) -> dict[str, object]:
    """Asymmetric error bars from rows holding recovery, ci_low and ci_high."""
    up = [(finite(r.ci_high) or 0.0) - (finite(r.recovery) or 0.0) for r in rows]
    down = [(finite(r.recovery) or 0.0) - (finite(r.ci_low) or 0.0) for r in rows]
    return {"type": "data", "array": up, "arrayminus": down}


def _notes(res: LensResult) -> str:
    return "".join(f"<p class='cap'>{e(n)}</p>" for n in res.notes)


def _qlabel(row: QuantSetting) -> str:
    return f"{row.label} (primary)" if row.kind == "primary" else row.label


@section("quantization")
def quantization_section(page: Page, res: LensResult) -> None:
    d = lens_data(res, QuantizationData)
    rows = d.settings
    if not rows:
        return
    fig = go.Figure()
    for scheme in dict.fromkeys(r.scheme for r in rows):
        sub = [r for r in rows if r.scheme == scheme]
        fig.add_trace(go.Bar(
            name=scheme, x=[_qlabel(r) for r in sub], y=[finite(r.recovery) for r in sub],
            error_y=_err(sub), marker_color=["#1f77b4" if r.informative else "#c7c7c7" for r in sub],
            marker_pattern_shape="/" if scheme == "asym" else "",
        ))
    fig.add_hline(y=0, line_color="#999")
    fig.update_layout(title="Recovery after weight quantization (grey: uninformative)", yaxis_title="recovery R",
                      height=380, showlegend=True)
    fig2 = go.Figure()
    full = d.full_precision
    for role in ROLES:
        if role not in full:
            continue
        fig2.add_trace(go.Scatter(
            name=role, mode="lines+markers", marker_color=ROLE_COLORS[role],
            x=["full precision", *(r.label for r in rows)],
            y=[full[role].score, *(r.scores[role].score for r in rows)],
        ))
    fig2.update_layout(title="Forget score of each quantized model", yaxis_title="knowledge score S",
                       yaxis_range=[0, 1.05], height=360)
    err = "".join(
        f"<tr><td>{e(_qlabel(r))}</td>"
        + "".join(f"<td>{num(r.weight_error[role].rel_error, '.4f')}</td>" for role in ROLES
                  if role in r.weight_error)
        + f"<td>{num(r.recovery)} ({num(r.ci_low)}–{num(r.ci_high)})</td></tr>"
        for r in rows
    )
    roles = [role for role in ROLES if role in rows[0].weight_error]
    table = ("<table><tr><th>setting</th>" + "".join(f"<th>rel. weight error {e(r)}</th>" for r in roles)
             + f"<th>recovery (95% CI)</th></tr>{err}</table>")
    page.section(
        "Quantization",
        page.figure(fig, "R = (S(U_q) − S(N_q)) / (S(B_q) − S(N_q)): every model quantized at the same setting. "
                    "95% CIs; the primary setting (fewest bits at which quantized B still knows the forget set, "
                    "chosen without U) is the one that can support DELETED.")
        + page.figure(fig2, "Knowledge score of quantized B, U and N on the forget set.")
        + table + _notes(res),
        "quantization",
    )


@section("relearn")
def relearn_section(page: Page, res: LensResult) -> None:
    d = lens_data(res, RelearnData)
    curves = d.curves
    if not curves:
        return
    titles = {"split": "Fine-tune on one half of the forget subjects, score the other (Deeb & Roger)",
              "retain": "Fine-tune on a few retain items, score the forget set (Łucki et al.)"}
    body = ""
    for variant, rows in curves.items():
        fig = make_subplots(rows=1, cols=2, subplot_titles=("knowledge score on held-out items", "recovery R"))
        for role in ROLES:
            if role in rows[0].extras():
                fig.add_trace(go.Scatter(name=f"S({role})", mode="lines+markers", x=[r.steps for r in rows],
                                         y=[r.extras()[role] for r in rows], marker_color=ROLE_COLORS[role]),
                              row=1, col=1)
        scored = [r for r in rows if finite(r.recovery) is not None]
        fig.add_trace(go.Scatter(name="recovery R (95% CI)", mode="lines+markers", x=[r.steps for r in scored],
                                 y=[r.recovery for r in scored], error_y=_err(scored),
                                 marker_color=["#ff7f0e" if r.side_effect_ok is not False else "#c7c7c7"
                                               for r in scored], line={"color": "#ff7f0e"}), row=1, col=2)
        chance = d.chance.get(variant)
        if chance is not None:
            fig.add_hline(y=chance, line_dash="dash", line_color="#bbb", annotation_text="chance", row=1, col=1)
        fig.add_hline(y=0, line_color="#999", row=1, col=2)
        fig.update_xaxes(title_text="fine-tuning steps")
        fig.update_yaxes(range=[0, 1.05], row=1, col=1)
        fig.update_layout(title=titles.get(variant, variant), height=380)
        bad = [r.steps for r in scored if r.side_effect_ok is False]
        cap = ("Scores on held-out items after fine-tuning copies of B, U and N identically; the verdict reads "
               "the largest step count.")
        if bad:
            cap += f" Retain side effects too large at {', '.join(map(str, bad))} steps (those recoveries do not count)."
        body += page.figure(fig, cap)
    split = d.split
    if split:
        both = " both ways (A→B and B→A, every item scored once)" if split.folds == 2 else " (A→B)"
        body += (f"<p class='cap'>Split by subject: {'?' if split.n_subjects_a is None else split.n_subjects_a} "
                 f"subjects in A, {'?' if split.n_subjects_b is None else split.n_subjects_b} in B; "
                 f"fine-tuned{both}.</p>")
    page.section("Relearning", body + _notes(res), "relearn")


def _role_color(role: str) -> str:
    """Colour of a role; further references (``reference_2``, ...) share the reference grey."""
    return ROLE_COLORS.get(role) or (ROLE_COLORS["reference"] if role.startswith("reference") else "#9467bd")


@section("leak_at_k")
def leak_at_k_section(page: Page, res: LensResult) -> None:
    d = lens_data(res, LeakAtKData)
    if not d.leak:
        return
    ks, roles = d.ks, list(d.leak)
    dis, con = d.leak_distractors, d.contrast
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "raw leak@k: answer (solid), mean distractor (dashed), greedy (dotted)",
        "contrast: leak@k(answer) − mean leak@k(distractors)"))
    for role in roles:
        c = _role_color(role)
        fig.add_trace(go.Scatter(name=f"answer {role}", mode="lines+markers", x=ks, y=d.leak[role],
                                 marker_color=c, line={"color": c}, legendgroup=role), row=1, col=1)
        if role in dis:
            fig.add_trace(go.Scatter(name=f"distractors {role}", mode="lines", x=ks, y=dis[role],
                                     line={"dash": "dash", "color": c}, legendgroup=role), row=1, col=1)
        if role in d.greedy:
            fig.add_trace(go.Scatter(name=f"greedy {role}", mode="lines", x=[ks[0], ks[-1]], y=[d.greedy[role]] * 2,
                                     line={"dash": "dot", "color": c}, legendgroup=role), row=1, col=1)
        if role in con:
            fig.add_trace(go.Scatter(name=f"contrast {role}", mode="lines+markers", x=ks, y=con[role],
                                     marker_color=c, line={"color": c}, legendgroup=role, showlegend=False),
                          row=1, col=2)
    fig.add_hline(y=0, line_color="#999", row=1, col=2)
    fig.update_xaxes(title_text="k", type="log", tickvals=ks)
    fig.update_yaxes(title_text="fraction of forget items leaked", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="answer − distractors", range=[-0.3, 1.05], row=1, col=2)
    fig.update_layout(title=f"leak@k over {d.n} samples per prompt", height=400)
    body = page.figure(
        fig, "Unbiased leak@k = 1 − C(n−c, k)/C(n, k) of the answer and of each distractor, counted in the same "
        f"samples; matcher: {d.matcher}, {'?' if d.max_new_tokens is None else d.max_new_tokens} new tokens per sample. "
        "A model without the knowledge names the answer as often as a distractor, so its contrast is 0 at any "
        "sampling temperature; recoveries read the contrast, the raw curves are data.")
    if con:
        cols = sorted({0, len(ks) - 1})
        head = "".join(f"<th>leak@{ks[j]} answer</th><th>leak@{ks[j]} distractors</th><th>contrast</th>"
                       for j in cols)
        trs = "".join(
            f"<tr><td>{e(role)}</td><td>{num(d.greedy.get(role))}</td>"
            + "".join(f"<td>{num(d.leak[role][j])}</td><td>{num(dis[role][j] if role in dis else None)}</td>"
                      f"<td>{num(con[role][j])}</td>" for j in cols) + "</tr>"
            for role in roles if role in con)
        body += f"<table><tr><th>model</th><th>greedy</th>{head}</tr>{trs}</table>"
    page.section("leak@k", body + _notes(res), "leak_at_k")
