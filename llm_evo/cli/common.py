"""Shared CLI plumbing: set up logging."""

from __future__ import annotations

import logging
from pathlib import Path


def setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    for noisy in ("ray", "lm-eval", "lm_eval", "transformers", "datasets", "mergekit"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
