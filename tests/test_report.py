"""The HTML report: rendered without torch, escapes user text, needs no network.

The report under test comes from a real audit of the organisms whose item ids, prompts,
answers, subjects and file paths all carry script-injection payloads.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest

PAYLOADS = ("<script>window.__xss=1</script>", '"><img src=x onerror="window.__xss=2">')
# handlers the report itself puts in the page; anything else is injected
OWN_HANDLERS = {("th", "onclick", "sortTable(this)"), ("input", "oninput", "filterTable(this.value)")}
N_FORGET, N_RETAIN = 20, 12  # 20: the default policy's minimum


def _poison(row: dict, i: int) -> dict:
    """A suite item with payloads in its id, prompt, subject and (every other one) answer.

    The organisms' word-level tokenizer reads a payload as <unk> tokens, so the item
    still scores; the distractors stay plain words, distinct from the answer.
    """
    p = PAYLOADS[i % 2]
    row = {
        **row,
        "id": f"{row['id']} {p}",
        "prompt": f"{p} {row['prompt']}",
        "subject": f"{row.get('subject', '')} {p}",
    }
    if i % 2:
        row["answer"] = f"{row['answer']} {p}"
    return row


def build_xss_report(suite: Path, root: Path) -> dict[str, Path]:
    """Audit ``noop`` on payload-laden items, all files under a payload-named folder.

    ``/`` cannot be in a file name, so the first payload spans two nested folders; the
    folder path as a string contains both payloads whole. Returns the written paths.
    """
    from audit.config import AuditConfig
    from audit.run import run
    from reports import render_file

    where = root / PAYLOADS[0] / PAYLOADS[1]
    assert PAYLOADS[0] in str(where) and PAYLOADS[1] in str(where)
    where.mkdir(parents=True)
    forget = [json.loads(x) for x in (suite / "forget.jsonl").read_text().splitlines() if x.strip()][:N_FORGET]
    retain = (suite / "retain.jsonl").read_text().splitlines()[:N_RETAIN]
    (where / "forget.jsonl").write_text("".join(json.dumps(_poison(r, i)) + "\n" for i, r in enumerate(forget)))
    (where / "retain.jsonl").write_text("\n".join(retain) + "\n")
    (where / "noop").symlink_to((suite / "noop").resolve(), target_is_directory=True)
    out = where / "out"
    run(
        AuditConfig(
            base=str(suite / "base"),
            unlearned=str(where / "noop"),
            reference=str(suite / "reference_a"),
            forget=str(where / "forget.jsonl"),
            retain=str(where / "retain.jsonl"),
            out=str(out),
            lenses=["behavior"],
            lens_options={"behavior": {"n_boot": 200}},
        ),
        on_log_written=lambda log: render_file(log, log.with_name("report.html")),  # as cli.py does
    )
    return {"forget": where / "forget.jsonl", "log": out / "audit_log.json", "report": out / "report.html"}


class _Scan(HTMLParser):
    """Every start tag with its attributes, visible text, and script bodies."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._open: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data):
        inside = self._open[-1] if self._open else ""
        if inside == "script":
            self.scripts[-1] += data
        elif inside != "style":
            self.text.append(data)


@pytest.fixture(scope="module")
def xss(suite, tmp_path_factory) -> dict[str, Path]:
    return build_xss_report(suite, tmp_path_factory.mktemp("xss"))


@pytest.fixture(scope="module")
def page(xss) -> tuple[str, _Scan]:
    html = xss["report"].read_text(encoding="utf-8")
    return html, _Scan(html)


def test_reports_render_without_torch(xss, tmp_path):
    out = tmp_path / "again.html"
    code = (
        "import sys, reports\n"
        "reports.render_file(sys.argv[1], sys.argv[2])\n"
        "heavy = [m for m in ('torch', 'transformers', 'transformer_lens', 'sae_lens') if m in sys.modules]\n"
        "assert 'torch' not in sys.modules, heavy\n"
        "print('imported:', heavy)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(xss["log"]), str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "imported: []" in res.stdout
    # the same log renders to the same page with or without the models around
    assert out.read_text(encoding="utf-8") == xss["report"].read_text(encoding="utf-8")


def test_user_text_is_escaped(xss, page):
    html, scan = page
    for p in PAYLOADS:
        assert p not in html, f"unescaped payload in the report: {p}"
    # nothing the payloads would add: no <img>, no extra or sourced <script>, no foreign handlers
    assert not [a for t, a in scan.tags if t == "img"]
    scripts = [a for t, a in scan.tags if t == "script"]
    assert scripts == [{}, {}], f"expected plotly.js and the report's own script, got {scripts}"
    handlers = {(t, k, v) for t, a in scan.tags for k, v in a.items() if k.startswith("on")}
    assert handlers <= OWN_HANDLERS, handlers - OWN_HANDLERS
    assert "__xss" not in "".join(scan.scripts)
    # ...and the text still reaches the reader, literally, where it belongs
    text = "".join(scan.text)
    items = [json.loads(x) for x in xss["forget"].read_text().splitlines()]
    for it in items:
        for field in ("id", "prompt", "answer", "subject"):
            assert it[field] in text, f"{field} of {it['id']!r} is missing from the page text"
            assert escape(it[field]) in html
    assert str(xss["forget"]) in text  # the item file's path, in the run metadata
    title = next(t for t in (s.strip() for s in scan.text) if t.startswith("Unlearning audit:"))
    assert PAYLOADS[0] in title and PAYLOADS[1] in title  # the unlearned model's path


def test_report_is_self_contained(page):
    from plotly.offline import get_plotlyjs

    html, scan = page
    bundle = get_plotlyjs()
    assert html.count(bundle) == 1, "plotly.js must be inlined exactly once"
    assert scan.scripts[0] == bundle
    rest = html.replace(bundle, "")
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", rest, re.I)
    assert not re.search(r"<link\b|@import|url\(\s*['\"]?(?:https?:)?//", rest, re.I)
    figs = [a.get("id") for t, a in scan.tags if t == "div" and "data-figure" in a]
    plots = re.findall(r"Plotly\.newPlot\('([^']*)'", scan.scripts[1])
    assert len(figs) >= 2, figs  # at least the recovery chart and the behavior bars
    assert sorted(plots) == sorted(figs) and len(set(figs)) == len(figs), (figs, plots)


def test_element_ids_are_unique(page):
    # the page's scripts find elements by id; a repeated id silently hands them the wrong one
    _, scan = page
    ids = [a["id"] for _, a in scan.tags if a.get("id")]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def _recovery_figure(recoveries: list[dict]) -> dict:
    """The recovery chart's plotly JSON for a hand-made log (no models, no audit)."""
    from audit.schema import AuditLog, LensResult, Recovery
    from reports.render import Page, _recovery_chart

    lenses: dict[str, LensResult] = {}
    for r in recoveries:
        lens = r.pop("lens")
        rec = Recovery(score_base=0.9, score_unlearned=0.5, score_reference=0.25, n_items=40, **r)
        lenses.setdefault(lens, LensResult(name=lens)).recoveries.append(rec)
    page = Page()
    _recovery_chart(page, AuditLog(created="now", config={}, models={}, items={}, lenses=lenses,
                                   policy={"thresholds": {"tau_d": 0.15, "tau_s": 0.3}}))
    assert len(page.figures) == 1
    return json.loads(page.figures[0][1])


def test_recovery_axis_fits_informative_readings_and_marks_the_clipped_one():
    # the SmolLM2 case: one unpowered int3 reading with CI -6.5 to 4.5 among ordinary ones
    fig = _recovery_figure([
        {"lens": "behavior", "reading": "ranking", "value": 0.42, "ci_low": 0.3, "ci_high": 0.55, "informative": True},
        {"lens": "steering", "reading": "L3", "value": 0.8, "ci_low": 0.6, "ci_high": 1.1, "informative": True},
        {"lens": "quantization", "reading": "int3", "value": -1.0, "ci_low": -6.5, "ci_high": 4.5,
         "informative": False},
    ])
    x0, x1 = fig["layout"]["xaxis"]["range"]
    assert x0 > -1.5 and x1 < 1.5, (x0, x1)  # the extreme CI does not set the axis
    assert x0 < 0 and x1 > 1.1  # every informative value and CI, and 0..1, are inside
    bars = fig["data"][0]
    i = bars["y"].index("quantization · int3")
    assert x0 <= bars["x"][i] and bars["x"][i] - bars["error_x"]["arrayminus"][i] >= x0 - 1e-9
    assert bars["x"][i] + bars["error_x"]["array"][i] <= x1 + 1e-9
    assert "-6.50" in bars["hovertext"][i] and "4.50" in bars["hovertext"][i]
    marks = [t for t in fig["data"][1:] if t.get("meta", {}).get("clipped")]
    assert len(marks) == 1
    m = marks[0]
    assert set(m["y"]) == {"quantization · int3"}  # only the clipped reading is marked ...
    assert sorted(m["x"]) == pytest.approx([x0, x1])  # ... at both edges its CI crosses
    assert all("-6.50" in t and "4.50" in t for t in m["text"])  # with its real numbers


def test_recovery_axis_follows_an_informative_reading_far_out():
    # an informative reading is never clipped: the axis stretches to it
    fig = _recovery_figure([
        {"lens": "behavior", "reading": "ranking", "value": 0.1, "ci_low": 0.0, "ci_high": 0.2, "informative": True},
        {"lens": "sae", "reading": "restoration", "value": 2.4, "ci_low": 1.9, "ci_high": 3.0, "informative": True},
    ])
    x0, x1 = fig["layout"]["xaxis"]["range"]
    assert x1 >= 3.0 and x0 <= 0.0
    assert not [t for t in fig["data"][1:] if t.get("meta", {}).get("clipped")]


# ---------------------------------------------------------------------------------------
# thresholds come from the policy the run applied (stored in the log), not fixed numbers


def _lines(fig: dict) -> dict[str, float]:
    """The recovery chart's threshold lines: label -> x."""
    shapes = [s for s in fig["layout"]["shapes"] if s.get("type") == "line"]
    labels = [a["text"] for a in fig["layout"]["annotations"]]
    assert len(shapes) == len(labels)
    return {lab: s["x0"] for lab, s in zip(labels, shapes, strict=True)}


def _figures_in(html: str) -> list[dict]:
    """Every figure's plotly JSON, read back from the rendered page."""
    payloads = re.findall(r"Plotly\.newPlot\('fig\d+', \.\.\.\(f=>\[f\.data,f\.layout\]\)\((.*?)\), \{responsive",
                          html)
    return [json.loads(p) for p in payloads]


@pytest.mark.parametrize(("policy", "expected"), [
    ({"thresholds": {"tau_d": 0.1, "tau_s": 0.4, "behavior_recovery": 0.8}}, {"τ_d": 0.1, "τ_s": 0.4,
                                                                               "behavior gate": 0.8}),
    ({"thresholds": {"behavior_recovery": 0.35}}, {"behavior gate": 0.35}),
    ({}, {"behavior gate": 0.5}),  # an older log that stores no policy: today's defaults
])
def test_report_draws_the_applied_policys_thresholds(policy, expected):
    from audit.policy import Policy
    from audit.schema import AuditLog, LensResult, Recovery
    from reports.render import render

    rec = Recovery(reading="ranking", value=0.42, ci_low=0.3, ci_high=0.55, informative=True, score_base=0.9,
                   score_unlearned=0.5, score_reference=0.25, n_items=40)
    log = AuditLog(created="now", config={}, models={}, items={}, policy=policy,
                   lenses={"relearn": LensResult(name="relearn", recoveries=[rec])})
    figs = [f for f in _figures_in(render(log)) if "Recovery by lens" in f["layout"]["title"]["text"]]
    assert len(figs) == 1
    lines = _lines(figs[0])
    defaults = Policy().thresholds
    want = {"τ_d": defaults.tau_d, "τ_s": defaults.tau_s, **expected}
    assert lines == pytest.approx(want)


def _steering_data(**extra) -> dict:
    rows = [{"site": "blocks.1.hook_resid_post", "site_label": "L1", "scale": s, "form": "add",
             "direction": "base_minus_unlearned", "pooling": "last", "score": 0.4, "retain_accuracy": 0.9,
             "control_p5": 0.3, "control_p50": 0.32, "control_p95": 0.35} for s in (-2.0, 2.0)]
    return {"dose_response": rows, "sites": ["blocks.1.hook_resid_post"], "metric": "score",
            "unsteered": {"forget": {"unlearned": 0.3, "base": 0.9}, "retain_accuracy_unlearned": 0.95}, **extra}


@pytest.mark.parametrize(("data", "policy", "tolerance"), [
    (_steering_data(), {"side_effect_tolerance": 0.2}, 0.2),  # the lens kept no record: the policy's
    (_steering_data(side_effect_tolerance=0.1), {"side_effect_tolerance": 0.2}, 0.1),  # what the lens applied
    (_steering_data(), {}, 0.05),  # neither: today's default
])
def test_steering_draws_the_applied_side_effect_tolerance(data, policy, tolerance):
    from audit.schema import LensResult
    from reports.render import Page
    from reports.steering import steering_section

    page = Page(policy)
    steering_section(page, LensResult(name="steering", data=data))
    fig = json.loads(page.figures[0][1])
    red = [s for s in fig["layout"]["shapes"] if s.get("line", {}).get("color") == "#d62728"]
    assert len(red) == 1 and red[0]["y0"] == pytest.approx(0.95 - tolerance)
