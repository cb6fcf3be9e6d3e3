"""The per-generation progress line."""

import io

from llm_evo.progress import GenerationProgress


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
