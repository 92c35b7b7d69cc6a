"""The sweep's progress for a person: click's progress bar (with ETA and the point being measured)
when stderr is a terminal, else the plain line per point that a log file or pipe can hold."""

from __future__ import annotations

import sys

import click

from ..bench.sweep import LineProgress, point_line


class ClickProgress:
    """A reporter for `run_sweep(progress=...)`; see `effattn.bench.sweep.LineProgress`."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.lines = None if self.tty else LineProgress(self.stream)
        self.bar = None
        self.now = ""

    def begin(self, total: int):
        if self.lines is None and total == 0:  # nothing left to measure: no bar reading 0/1
            self.lines = LineProgress(self.stream)
        if self.lines:
            return self.lines.begin(total)
        self.bar = click.progressbar(
            length=max(total, 1),
            label="points",
            file=self.stream,
            show_eta=True,
            show_pos=True,
            item_show_func=lambda item: item,
        )
        self.bar.__enter__()

    def start(self, label: str, n: int, running: int = 1):
        if self.bar is not None:
            self.now = f"{label} n={n}" if running <= 1 else f"{running} in flight, latest {label} n={n}"
            self.bar.current_item = self.now  # (update(0, ...) would not redraw: click draws per step)
            self.bar.render_progress()

    def finish(self, row: dict):
        if self.lines:
            return self.lines.finish(row)
        if row.get("status") != "ok" or row.get("fault"):  # what went wrong stays on screen
            click.echo(f"\r\033[K{point_line(row)}", file=self.stream)
        self.bar.update(1, self.now)

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
