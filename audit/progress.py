"""One progress interface for the whole library.

Rich bars when stderr is a terminal, plain log lines otherwise (CI), nothing when
silenced. A description is printed as text, never as rich markup (``[/x]`` in a model
path is shown as is). Library code never prints; it opens a :func:`progress` context instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

log = logging.getLogger("audit")

_state = {"enabled": True}


def set_progress(enabled: bool) -> None:
    """Turn progress display on or off (e.g. ``--quiet``)."""
    _state["enabled"] = enabled


class _Bar:
    def __init__(self, desc: str, total: int | None) -> None:
        self.desc, self.total, self.n = desc, total, 0
        self._rich: tuple[Progress, TaskID] | None = None  # the rich bar and its task, in a terminal
        self._t0 = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.n += n
        if self._rich is not None:
            p, task = self._rich
            p.update(task, advance=n)


@contextmanager
def progress(desc: str, total: int | None = None) -> Iterator[_Bar]:
    """A progress bar for one slow step.

    Args:
        desc: what is being done.
        total: number of units, if known.
    """
    bar = _Bar(desc, total)
    enabled = _state["enabled"]
    if enabled and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        # the description is data (a model path, an organism's name): text, never markup;
        # the bar goes where the check above looked, stderr (stdout is for results)
        with Progress(
            TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), transient=True, console=Console(stderr=True),
        ) as p:
            bar._rich = (p, p.add_task(desc, total=total))
            yield bar
    else:
        yield bar
    if enabled:
        msg = f"{desc}: {bar.n}{'/' + str(total) if total else ''} in {time.perf_counter() - bar._t0:.1f}s"
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.text import Text

            Console(stderr=True).print(Text(msg, style="dim"))
        else:
            log.info(msg)
