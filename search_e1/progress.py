"""The one rich progress bar of search-e1 (indexing, store conversion, encoding, evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def progress_bar(
    total: int, description: str, enabled: bool = True, *, unit: str = "passages", completed: int = 0,
    transient: bool = False,
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar yielding ``advance(n)``; a no-op when ``enabled`` is False.

    It shows the rate in ``unit``/s (``unit="bytes"``: sizes and MB/s); ``completed`` starts the
    bar part-way (a resumed job); a ``transient`` bar is erased when it finishes.
    """
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    if unit == "bytes":
        counts: tuple = (DownloadColumn(), TransferSpeedColumn())
    else:
        counts = (MofNCompleteColumn(), _rate_column(unit))
    columns = (TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=transient) as bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)


def _rate_column(unit: str) -> Any:
    """A rich column with the task's rate, e.g. ``1,234 passages/s``."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s")

    return RateColumn()
