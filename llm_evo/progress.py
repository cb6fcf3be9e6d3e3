"""A one-line progress bar per generation: done/total, best so far, ETA.

Redrawn in place on a terminal; in logs and CI (no TTY) it prints one final line per
generation, so output stays readable and grep-able.
"""

from __future__ import annotations

import sys
import time


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class GenerationProgress:
    def __init__(self, label: str, total: int, best: float | None = None, quiet: bool = False,
                 stream=None, width: int = 20):
        self.label = label
        self.total = total
        self.done = 0
        self.failed = 0
        self.best = best
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        if self.tty and not quiet:
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

    def _draw(self) -> None:
        self.stream.write("\r" + self.line() + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.quiet:
            return
        if self.tty:
            self._draw()
            self.stream.write("\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
