"""Shared CLI plumbing: load a config, apply flag overrides, set up logging."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llm_evo.config import RunConfig, load_config, with_overrides


def load_with_overrides(path: str, overrides: dict[str, Any]) -> tuple[RunConfig, Path]:
    """The validated config with CLI flags applied, and the folder it came from."""
    config = load_config(path)
    config = with_overrides(config, overrides)
    return config, Path(path).resolve().parent


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
