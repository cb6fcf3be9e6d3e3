"""Example files: both formats parse; every malformed line is a ConfigError naming file:line."""

from __future__ import annotations

import json

import pytest

from llm_evo.errors import ConfigError
from llm_evo.mix.data import PairExample, TripleExample, load_examples


def write(tmp_path, *lines: str):
    path = tmp_path / "ex.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pairs_parse(tmp_path):
    path = write(tmp_path, json.dumps({"input": "1 2 3", "output": " 4"}), "",
                 json.dumps({"input": "a", "output": " b"}))
    data = load_examples(path)
    assert data.kind == "pairs" and len(data) == 2
    assert data.examples[0] == PairExample("1 2 3", " 4")


def test_triples_parse_with_string_or_list_and_optional_neg(tmp_path):
    path = write(tmp_path, json.dumps({"query": "q", "pos": "p", "neg": ["n1", "n2"]}),
                 json.dumps({"query": "q2", "pos": ["p2", "p3"]}))
    data = load_examples(path)
    assert data.kind == "triples"
    assert data.examples == (TripleExample("q", ("p",), ("n1", "n2")),
                             TripleExample("q2", ("p2", "p3"), ()))


@pytest.mark.parametrize(("lines", "needle"), [
    (['{"input": "a", "output": " b"}', '{"input": "a", "output"'], "ex.jsonl:2: malformed JSON"),
    (['["a", "b"]'], "ex.jsonl:1: each line must be a JSON object"),
    (['{"text": "a"}'], "ex.jsonl:1: unknown example format"),
    (['{"input": "a", "output": ""}'], "'output' is empty"),
    (['{"input": 3, "output": "b"}'], "field 'input' must be a string"),
    (['{"query": "q", "pos": []}'], "'pos' is empty"),
    (['{"query": "q", "pos": ["p"], "neg": [1]}'], "field 'neg' must be a string or a list"),
    (['{"query": "q", "pos": "p", "score": 1}'], "unexpected field 'score'"),
    (['{"input": "a", "output": " b"}', '{"query": "q", "pos": "p"}'], "ex.jsonl:2: mixes"),
    ([""], "no examples"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, lines, needle):
    path = write(tmp_path, *lines)
    with pytest.raises(ConfigError) as info:
        load_examples(path)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="example data file not found"):
        load_examples(tmp_path / "nope.jsonl")
