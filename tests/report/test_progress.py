"""The per-generation progress line."""

import io

from llm_evo.report.progress import GenerationProgress, progress_factory, silent_progress


def test_line_counts_failures_best_and_eta():
    out = io.StringIO()
    p = GenerationProgress("gen 1/3", 4, stream=out)
    p.update(0.5)
    p.update(None)
    assert "2/4 (1 failed)" in p.line() and "best 0.5000" in p.line() and "ETA" in p.line()
    p.update(0.7)
    p.update(0.6)
    p.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and "4/4" in text and "best 0.7000" in text and "took" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_only_a_stream_the_caller_hands_over_is_written_to():
    silent = silent_progress("gen 1/2", 2)  # what a library caller gets: counts, draws nothing
    silent.update(0.3)
    silent.close()
    assert "1/2" in silent.line() and silent.stream is None

    quiet_out = io.StringIO()
    p = progress_factory(quiet_out, quiet=True)("gen 1/2", 2)  # --quiet
    p.update(0.3)
    p.close()
    assert quiet_out.getvalue() == ""

    tty = _Terminal()
    p = progress_factory(tty)("round 1", 2, best=0.9)  # a terminal: redrawn in place
    p.update(0.4)
    p.update(None)
    p.close()
    text = tty.getvalue()
    assert text.count("\r") == 4 and text.endswith("\x1b[K\n") and text.count("\n") == 1
    assert "2/2 (1 failed)" in text and "best 0.9000" in text
