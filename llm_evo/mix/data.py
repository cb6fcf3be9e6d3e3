"""Example data for data-driven mixing weights: one JSON object per line.

Two formats, told apart by their keys: `{"input", "output"}` pairs score causal LMs;
`{"query", "pos": [...], "neg": [...]}` triples score embedding models and rerankers.
A file must use one format throughout, so a typo in one line fails loudly instead of
silently dropping that example from the loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llm_evo.errors import ConfigError


@dataclass(frozen=True)
class PairExample:
    """A prompt and the continuation whose tokens are scored (decoders)."""

    input: str
    output: str


@dataclass(frozen=True)
class TripleExample:
    """A query, its relevant passages and hard negatives (encoders and rerankers)."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()


Example = PairExample | TripleExample


@dataclass(frozen=True)
class ExampleData:
    """The parsed file: `kind` is "pairs" or "triples"."""

    path: str
    kind: str
    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return len(self.examples)


def _strings(value: object, where: str, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: field {field!r} must be a string or a list of strings")
    return tuple(value)


def _parse_line(obj: object, where: str) -> Example:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: each line must be a JSON object")
    keys = set(obj)
    if {"input", "output"} <= keys:
        extra = keys - {"input", "output"}
        if extra:
            raise ConfigError(f"{where}: unexpected field {sorted(extra)[0]!r} in an "
                              "{input, output} example")
        for field in ("input", "output"):
            if not isinstance(obj[field], str):
                raise ConfigError(f"{where}: field {field!r} must be a string")
        if not obj["output"]:
            raise ConfigError(f"{where}: field 'output' is empty: there is nothing to score")
        return PairExample(obj["input"], obj["output"])
    if {"query", "pos"} <= keys:
        extra = keys - {"query", "pos", "neg"}
        if extra:
            raise ConfigError(f"{where}: unexpected field {sorted(extra)[0]!r} in a "
                              "{query, pos, neg} example")
        if not isinstance(obj["query"], str):
            raise ConfigError(f"{where}: field 'query' must be a string")
        pos = _strings(obj["pos"], where, "pos")
        if not pos:
            raise ConfigError(f"{where}: field 'pos' is empty: a query needs a positive")
        neg = _strings(obj.get("neg", []), where, "neg")
        return TripleExample(obj["query"], pos, neg)
    raise ConfigError(f"{where}: unknown example format with fields {sorted(keys)}; expected "
                      "{input, output} or {query, pos, neg}")


def load_examples(path: str | Path) -> ExampleData:
    """Read and validate a JSONL example file; ConfigError names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: example data file not found")
    examples: list[Example] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: malformed JSON ({exc.msg})") from None
        example = _parse_line(obj, where)
        if examples and type(example) is not type(examples[0]):
            raise ConfigError(f"{where}: mixes {{input, output}} and {{query, pos, neg}} "
                              "examples in one file")
        examples.append(example)
    if not examples:
        raise ConfigError(f"{path}: no examples")
    kind = "pairs" if isinstance(examples[0], PairExample) else "triples"
    return ExampleData(str(path), kind, tuple(examples))
