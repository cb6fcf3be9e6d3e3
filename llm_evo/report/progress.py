"""A one-line progress bar per generation (or pool round): done/total, best so far, ETA.

State and formatting only. Why no stream of its own: only `cli/` writes to the terminal, so
the search loops are handed a `ProgressFactory` by the CLI (`progress_factory(sys.stderr)`)
and, without one, make `silent_progress` bars that count but draw nothing. On a terminal
the line is redrawn in place; in logs and CI (no TTY) one final line per generation is
written, so output stays readable and grep-able.
"""

from __future__ import annotations

import time
from typing import IO, Protocol


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class GenerationProgress:
    """Counts finished evaluations; draws on `stream` only when the caller gave one.

    `stream` is the caller's text stream (the CLI passes stderr); None, or `quiet`, keeps the
    bar silent while `line()` still renders it.
    """

    def __init__(self, label: str, total: int, best: float | None = None, quiet: bool = False,
                 stream: IO[str] | None = None, width: int = 20):
        self.label = label
        self.total = total
        self.done = 0
        self.failed = 0
        self.best = best
        self.quiet = quiet or stream is None
        self.stream = stream
        self.width = width
        self.started = time.perf_counter()
        self.tty = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        if self.tty and not self.quiet:
            self._draw()

    def update(self, score: float | None, best: float | None = None) -> None:
        self.done += 1
        if score is None:
            self.failed += 1
        if best is not None:
            self.best = best
        elif score is not None and (self.best is None or score > self.best):
            self.best = score
        if self.tty and not self.quiet:
            self._draw()

    def line(self) -> str:
        filled = int(self.width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.started
        if self.done and self.done < self.total:
            eta = f"ETA {_fmt_eta(elapsed / self.done * (self.total - self.done))}"
        else:
            eta = f"took {_fmt_eta(elapsed)}"
        best = f"best {self.best:.4f}" if self.best is not None else "best -"
        failed = f" ({self.failed} failed)" if self.failed else ""
        return f"{self.label} [{bar}] {self.done}/{self.total}{failed} | {best} | {eta}"

    def _write(self, text: str) -> None:
        if self.stream is None:  # never drawn without a stream (quiet); for the type checker
            return
        self.stream.write(text)
        self.stream.flush()

    def _draw(self) -> None:
        self._write("\r" + self.line() + "\x1b[K")

    def close(self) -> None:
        if self.quiet:
            return
        self._write(("\r" + self.line() + "\x1b[K\n") if self.tty else (self.line() + "\n"))


class ProgressFactory(Protocol):
    """How a search loop makes the bar of one generation or round."""

    def __call__(self, label: str, total: int,
                 best: float | None = None) -> GenerationProgress: ...


def silent_progress(label: str, total: int, best: float | None = None) -> GenerationProgress:
    """The default of the search loops: counts, draws nothing (a library writes no output)."""
    return GenerationProgress(label, total, best)


def progress_factory(stream: IO[str], quiet: bool = False) -> ProgressFactory:
    """Bars drawn on `stream`; the CLI passes stderr and its `--quiet` flag."""

    def make(label: str, total: int, best: float | None = None) -> GenerationProgress:
        return GenerationProgress(label, total, best, quiet=quiet, stream=stream)

    return make

