"""Prompt templates and the genome's presentation to the model (0..100 integers, labelled).

The model sees a genotype as a table: one row per layer group, one column per
(model, filter, parameter), every gene rescaled from its real range to integers 0..100.
Integers on one scale are what EvoLLM found small and mid-sized models handle best, and
labelled rows/columns let the model reason about "the weight of model A in late layers".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from llm_evo.errors import ConfigError
from llm_evo.genome import SearchSpace
from llm_evo.strategies.llm.parse import SCALE

PACKAGE = "llm_evo.strategies.llm"  # the built-in templates ship in its prompts/ folder
SYSTEM_PLACEHOLDERS = ("scale", "n_rows", "n_cols", "n_genes", "thought_max_chars")
USER_PLACEHOLDERS = (
    *SYSTEM_PLACEHOLDERS,
    "generation", "best_fitness", "n_examples", "examples", "rows", "columns",
)


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Layout:
    """How a flat genotype is shown as a rows x cols grid of 0..100 integers."""

    space: SearchSpace
    rows: int
    cols: int
    blocked: bool = False  # a block of rows of a larger grid (EvoLLM's block-wise queries)

    @classmethod
    def from_space(cls, space: SearchSpace) -> Layout:
        """One row per layer group when the axes are laid out group-major (they are for
        every `Genome`); a single row otherwise."""
        n = space.n_genes
        groups = sorted({a.layer_group for a in space.axes})
        rows = len(groups)
        if rows and n % rows == 0:
            cols = n // rows
            if all(a.layer_group == groups[i // cols] for i, a in enumerate(space.axes)):
                return cls(space, rows, cols)
        return cls(space, 1, n)

    def blocks(self, block_rows: int | None) -> list[tuple[int, int]]:
        """[first, end) row ranges of at most `block_rows` rows each (one block: None)."""
        step = block_rows or self.rows
        return [(r, min(self.rows, r + step)) for r in range(0, self.rows, step)]

    def block(self, first: int, end: int) -> Layout:
        """Rows first..end-1 as a grid of their own, for one block-wise query."""
        a, b = first * self.cols, end * self.cols
        sub = SearchSpace(self.space.axes[a:b], self.space.lower[a:b],
                          self.space.upper[a:b], self.space.initial[a:b])
        return Layout(sub, end - first, self.cols, blocked=True)

    @property
    def _span(self) -> np.ndarray:
        span = self.space.upper - self.space.lower
        return np.where(span > 0, span, 1.0)

    def to_scale(self, genotype: np.ndarray) -> np.ndarray:
        """Genes mapped linearly from [low, high] to [0, 100]."""
        x = np.asarray(genotype, dtype=np.float64)
        return np.clip((x - self.space.lower) / self._span * SCALE, 0, SCALE)

    def from_scale(self, values: np.ndarray) -> np.ndarray:
        """The inverse of to_scale, clipped to the genome's real range."""
        v = np.asarray(values, dtype=np.float64)
        return self.space.clip_range(self.space.lower + v / SCALE * self._span)

    def grid(self, genotype: np.ndarray) -> list[list[int]]:
        ints = np.rint(self.to_scale(genotype)).astype(int).tolist()
        return [ints[r * self.cols:(r + 1) * self.cols] for r in range(self.rows)]

    def gene_labels(self) -> list[str]:
        return [a.label for a in self.space.axes]

    def row_legend(self) -> str:
        lines = []
        for r in range(self.rows):
            axis = self.space.axes[r * self.cols]
            what = (f"layers {axis.layers[0]}-{axis.layers[1] - 1}"
                    if self.rows > 1 or self.blocked else "all")
            lines.append(f"  row {r}: {what}")
        return "\n".join(lines)

    @property
    def is_dataflow(self) -> bool:
        """A data-flow genome's path (llm_evo/dataflow.py), shown in words as well."""
        return self.space.describe is not None and not self.blocked

    def column_legend(self) -> str:
        lines = []
        for c in range(self.cols):
            axis = self.space.axes[c]
            if self.is_dataflow:
                runs = " (above 50: the layer runs)" if axis.param == "use" else ""
                lines.append(f"  column {c}: {axis.label} (0 means {_fmt(axis.low)}, {SCALE} "
                             f"means {_fmt(axis.high)}){runs}")
                continue
            parts = [axis.model] if axis.model is not None else []
            parts += [axis.filter or "all other tensors", axis.param]
            if self.rows == 1 and not self.blocked:
                parts.insert(0, f"layers {axis.layers[0]}-{axis.layers[1] - 1}")
            lines.append(
                f"  column {c}: {' / '.join(parts)}"
                f" (0 means {_fmt(axis.low)}, {SCALE} means {_fmt(axis.high)})"
            )
        return "\n".join(lines)

    def schema(self, thought_max_chars: int) -> dict[str, Any]:
        """The answer's JSON schema, with the grid's exact shape and value bounds."""
        row = {
            "type": "array",
            "minItems": self.cols,
            "maxItems": self.cols,
            "items": {"type": "integer", "minimum": 0, "maximum": SCALE},
        }
        return {
            "type": "object",
            "properties": {
                "thought": {"type": "string", "maxLength": thought_max_chars},
                "mean_genome": {
                    "type": "array",
                    "minItems": self.rows,
                    "maxItems": self.rows,
                    "items": row,
                },
            },
            "required": ["thought", "mean_genome"],
            "additionalProperties": False,
        }


def _read(path: str | None, default: str, key: str) -> tuple[str, str]:
    if path is None:
        text = resources.files(PACKAGE).joinpath("prompts", default).read_text("utf-8")
        return text, f"<built-in {default}>"
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}: prompt file {path} not found")
    return file.read_text("utf-8"), str(file)


class PromptTemplates:
    """The system and user templates ($placeholders, see docs/llm-strategy.md)."""

    def __init__(self, system_path: str | None = None, user_path: str | None = None) -> None:
        system, system_src = _read(system_path, "system.txt", "llm.system_prompt")
        user, user_src = _read(user_path, "user.txt", "llm.user_prompt")
        self.system = Template(system)
        # a data-flow genome is a path of layers, not merge weights: its own built-in default
        self.system_dataflow = self.system if system_path else Template(
            _read(None, "system_dataflow.txt", "llm.system_prompt")[0])
        self.user = Template(user)
        # Render once with every placeholder so a typo fails at start-up, not mid-run.
        sample = {k: "x" for k in USER_PLACEHOLDERS}
        self._check(self.system, sample, "llm.system_prompt", system_src)
        self._check(self.user, sample, "llm.user_prompt", user_src)

    @staticmethod
    def _check(template: Template, values: dict[str, str], key: str, source: str) -> None:
        try:
            template.substitute(values)
        except KeyError as exc:
            known = ", ".join(f"${k}" for k in USER_PLACEHOLDERS)
            raise ConfigError(
                f"{key}: {source} uses unknown placeholder ${exc.args[0]} (known: {known})"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{key}: {source}: {exc} (write $$ for a literal $)") from None

    def render_system(self, layout: Layout, thought_max_chars: int) -> str:
        template = self.system_dataflow if layout.is_dataflow else self.system
        return template.substitute(self._common(layout, thought_max_chars)).strip()

    def render_user(
        self,
        layout: Layout,
        thought_max_chars: int,
        generation: int,
        best_fitness: float | None,
        examples: list[tuple[np.ndarray, float]],
    ) -> str:
        """`examples` are (genotype, fitness) pairs, already sorted worst to best."""
        lines = [
            f"  fitness {fitness:.6g}: {json.dumps(layout.grid(genotype))}"
            + (f"\n    path: {layout.space.describe(genotype)}" if layout.is_dataflow else "")
            for genotype, fitness in examples
        ]
        values = {
            **self._common(layout, thought_max_chars),
            "generation": str(generation),
            "best_fitness": "none yet" if best_fitness is None else f"{best_fitness:.6g}",
            "n_examples": str(len(examples)),
            "examples": "\n".join(lines) or "  (none yet: every candidate so far failed)",
            "rows": layout.row_legend(),
            "columns": layout.column_legend(),
        }
        return self.user.substitute(values).strip()

    @staticmethod
    def _common(layout: Layout, thought_max_chars: int) -> dict[str, str]:
        return {
            "scale": str(SCALE),
            "n_rows": str(layout.rows),
            "n_cols": str(layout.cols),
            "n_genes": str(layout.space.n_genes),
            "thought_max_chars": str(thought_max_chars),
        }
