"""Lenient extraction and strict validation of the model's `{"thought", "mean_genome"}` answer.

Extraction forgives what small models do (prose around the JSON, code fences, raw control
characters inside strings); validation does not: the shape, finiteness and the 0..100 range
are checked, and each failure says exactly what is wrong so it can be fed back to the model.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

SCALE = 100

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


class AnswerError(ValueError):
    """The answer is unusable; the message is written to be sent back to the model."""


def extract_json(text: str | None) -> dict[str, Any]:
    """The first JSON object in `text` (preferring one with a mean_genome key)."""
    if text is None or not text.strip():
        raise AnswerError("the answer was empty; reply with a single JSON object")
    decoder = json.JSONDecoder(strict=False)  # strict=False: raw newlines/tabs in strings
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    found: list[dict[str, Any]] = []
    first_error: json.JSONDecodeError | None = None
    for candidate in candidates:
        try:
            obj = decoder.decode(candidate)
        except json.JSONDecodeError as exc:
            first_error = first_error or exc
            continue
        if isinstance(obj, dict):
            found.append(obj)
    if not found:
        for match in re.finditer(r"\{", text):
            try:
                obj, _ = decoder.raw_decode(text, match.start())
            except json.JSONDecodeError as exc:
                first_error = first_error or exc
                continue
            if isinstance(obj, dict):
                found.append(obj)
                if "mean_genome" in obj:
                    break
    for obj in found:
        if "mean_genome" in obj:
            return obj
    if found:
        return found[0]
    detail = f" ({first_error.msg} at character {first_error.pos})" if first_error else ""
    raise AnswerError(f"the answer is not valid JSON{detail}; reply with a single JSON object")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AnswerError(f"{where} is {json.dumps(value)[:40]}, not a number")
    if not math.isfinite(value):
        raise AnswerError(f"{where} is {value}, not a finite number")
    return float(value)


def parse_answer(
    text: str | None, rows: int, cols: int, labels: list[str] | None = None
) -> tuple[str, np.ndarray]:
    """(thought, flat genes on the 0..100 scale) from an answer, or AnswerError saying why.

    `mean_genome` must be `rows` lists of `cols` numbers; a flat list of rows*cols numbers
    is also accepted, since its meaning is unambiguous.
    """
    obj = extract_json(text)
    if "mean_genome" not in obj:
        keys = ", ".join(sorted(obj)) or "none"
        raise AnswerError(f"the JSON object has no mean_genome key (keys: {keys})")
    thought = obj.get("thought", "")
    thought = thought if isinstance(thought, str) else json.dumps(thought)
    grid = obj["mean_genome"]
    expected = f"{rows} lists of {cols} numbers"
    if not isinstance(grid, list):
        raise AnswerError(f"mean_genome must be a list of {expected}, got {type(grid).__name__}")
    if len(grid) == rows * cols and not any(isinstance(r, list) for r in grid):
        grid = [grid[r * cols:(r + 1) * cols] for r in range(rows)]
    if len(grid) != rows:
        raise AnswerError(f"mean_genome has {len(grid)} rows, expected {expected}")
    values: list[float] = []
    for r, row in enumerate(grid):
        if not isinstance(row, list):
            raise AnswerError(f"mean_genome[{r}] is not a list; expected {expected}")
        if len(row) != cols:
            raise AnswerError(f"mean_genome[{r}] has {len(row)} values, expected {cols}")
        for c, value in enumerate(row):
            label = f" ({labels[r * cols + c]})" if labels else ""
            where = f"mean_genome[{r}][{c}]{label}"
            number = _number(value, where)
            if not 0 <= number <= SCALE:
                raise AnswerError(f"{where} = {number:g} is outside the valid range 0..{SCALE}")
            values.append(number)
    return thought, np.array(values, dtype=np.float64)
