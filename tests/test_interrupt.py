"""Three quick Ctrl-C presses on a running ``audit run`` (issue #23).

The real CLI runs in a subprocess (``python -m cli``, the path that used to end in
SIGINT instead of exit 130) over a folder holding an earlier run's results; three
SIGINTs 50 ms apart must give exit 130, one line saying so, no traceback (an atexit
handler's included), and the earlier results untouched. Two points: while torch is
being imported (the command's first step, where an interrupted import used to leave
torch's atexit logging on the terminal, and the message was skipped), and inside a lens
(``relearn``, once ``behavior`` has finished: its ``.partial`` checkpoint must be one
that ``--resume`` accepts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LENSES = "behavior,relearn"  # relearn: ~10 s of fine-tuning with a progress line every ~0.7 s
MAX_ITEMS = 24
PROGRESS = re.compile(r".+: \d+(/\d+)? in \d+\.\d+s$")  # audit.progress's plain line
POINTS = ["torch_import", "in_lens"]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AUDIT_CACHE=str(cache), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    return env


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


@pytest.fixture(scope="module")
def earlier(suite, run_args, tmp_path_factory) -> Path:
    """An output folder holding a finished (fast, behavior-only) run's results."""
    out = tmp_path_factory.mktemp("earlier") / "o"
    res = subprocess.run(_cli(run_args(suite, out, lenses="behavior", max_items=MAX_ITEMS)), cwd=ROOT,
                         env=_env(tmp_path_factory.mktemp("cache0")), capture_output=True, text=True, timeout=240)
    assert res.returncode in (0, 1), res.stderr
    assert (out / "audit_log.json").is_file() and (out / "report.html").is_file()
    return out


def _torch_loaded(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see torch being imported")
@pytest.mark.parametrize("point", POINTS)
def test_three_quick_ctrl_c_exit_130_with_one_line(point, earlier, suite, run_args, tmp_path):
    out, cache = tmp_path / "o", tmp_path / "cache"
    shutil.copytree(earlier, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    args = run_args(suite, out, lenses=LENSES, max_items=MAX_ITEMS)
    proc = subprocess.Popen(_cli(args), cwd=ROOT, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    err_lines: list[str] = []
    stdout: list[str] = []
    readers = [threading.Thread(target=lambda: err_lines.extend(line.rstrip("\n") for line in proc.stderr)),
               threading.Thread(target=lambda: stdout.append(proc.stdout.read()))]
    for r in readers:
        r.start()
    try:
        behavior_done = out / ".partial" / "behavior.json"  # written atomically, before relearn starts
        ready = (lambda: _torch_loaded(proc.pid)) if point == "torch_import" else behavior_done.exists
        deadline = time.monotonic() + 180
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before the point {point}: {err_lines}"
        assert ready(), f"{point} not reached in 180 s"
        t0 = time.monotonic()
        for _ in range(3):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        rc = proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        for r in readers:
            r.join(timeout=30)
    print(f"{point}: exit {rc} {took:.1f} s after the first SIGINT; stderr {err_lines}")

    text = "\n".join(err_lines) + "".join(stdout)
    assert rc == 130, text
    assert "Traceback" not in text and "Exception ignored" not in text, text
    assert "".join(stdout) == ""
    said = [line for line in err_lines if not PROGRESS.match(line)]
    assert len(said) == 1, said  # progress lines printed before the signals, then one line
    assert said[0].startswith("interrupted (SIGINT): previous results are untouched"), said
    assert "rerun with --resume" in said[0]
    # nothing already written is lost, nothing half-written is left
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list(out.rglob("*.tmp")) and not list(cache.rglob("*.tmp"))
    partial = sorted((out / ".partial").glob("*.json")) if (out / ".partial").exists() else []
    for p in partial:
        json.loads(p.read_text())
    if point == "torch_import":
        assert not partial
        return
    # behavior's checkpoint, written before the signals: --resume takes it as it is
    assert [p.stem for p in partial] == ["behavior"]
    res = subprocess.run(_cli([*run_args(suite, out, lenses="behavior", max_items=MAX_ITEMS), "--resume"]),
                         cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=240)
    assert res.returncode in (0, 1), res.stderr
    assert "resumed lens behavior" in res.stderr
    assert json.loads((out / "audit_log.json").read_text())["lenses"]["behavior"]
