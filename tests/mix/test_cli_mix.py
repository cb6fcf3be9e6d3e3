"""`llm-evo mix` on bad input: one line naming the field or file, exit code 2, no traceback.

Every check here fails before any model is loaded, so model folders holding only a
config.json are enough.
"""

from __future__ import annotations

import json

import pytest

from tests.cli.helpers import assert_one_line_error, cli


@pytest.fixture()
def env(tmp_path):
    for name, arch in (("a", "LlamaForCausalLM"), ("b", "LlamaForCausalLM"),
                       ("bert", "BertModel")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"architectures": [arch]}))
    (tmp_path / "pairs.jsonl").write_text('{"input": "1 2", "output": " 3"}\n')
    (tmp_path / "bad.jsonl").write_text('{"input": "1 2", "output": " 3"}\n{"input": \n')
    (tmp_path / "odd.jsonl").write_text('{"prompt": "1 2", "completion": " 3"}\n')
    (tmp_path / "triples.jsonl").write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n')
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    return tmp_path


CASES = [
    (["missing", "b", "--weights", "0.5,0.5", "--out", "o"], ["missing", "not found"]),
    (["a", "b", "--weights", "0.6,0.3", "--out", "o"], ["--weights", "sum to 0.9, not 1"]),
    (["a", "b", "--weights", "0.2,0.3,0.5", "--out", "o"], ["3 weight(s) for 2 model(s)"]),
    (["a", "b", "--weights", "x,y", "--out", "o"], ["--weights", "comma-separated"]),
    (["a", "b", "--out", "o"], ["exactly one of --weights or --example-data"]),
    (["a", "b", "--weights", "0.5,0.5", "--example-data", "pairs.jsonl", "--out", "o"],
     ["exactly one of"]),
    (["a", "b", "--weights", "0.5,0.5"], ["--out"]),
    (["a", "b", "--weights", "0.5,0.5", "--out", "full"], ["full", "not empty", "--force"]),
    (["a", "bert", "--weights", "0.5,0.5", "--out", "o"], ["bert", "architecture"]),
    (["a", "--weights", "1", "--out", "o"], ["at least 2 models"]),
    (["a", "b", "--example-data", "bad.jsonl", "--out", "o"], ["bad.jsonl:2", "malformed"]),
    (["a", "b", "--example-data", "odd.jsonl", "--out", "o"], ["odd.jsonl:1", "unknown"]),
    (["a", "b", "--example-data", "nope.jsonl", "--out", "o"], ["nope.jsonl", "not found"]),
    (["a", "b", "--example-data", "triples.jsonl", "--out", "o"], ["causal LM", "{input"]),
    (["a", "b", "--example-data", "pairs.jsonl", "--temperature", "0", "--out", "o"],
     ["--temperature"]),
]


@pytest.mark.parametrize(("args", "needles"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line(env, args, needles):
    proc = cli("llm-evo", "mix", *args, cwd=env)
    assert_one_line_error(proc, *needles)
    assert not (env / "o").exists()


def test_no_normalize_accepts_any_sum_and_dry_run_writes_nothing(env):
    proc = cli("llm-evo", "mix", "a", "b", "--weights", "0.6,0.6", "--no-normalize",
               "--dry-run", "--json", cwd=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["weights"] == [0.6, 0.6] and result["normalize"] is False
    assert result["out"] is None and result["losses"] is None


def test_help_lists_mix_and_mix_help_stays_light():
    import subprocess
    import sys

    proc = cli("llm-evo", "--help")
    assert proc.returncode == 0 and "mix" in proc.stdout
    code = ("import sys\nfrom llm_evo.cli import main\ntry:\n    main(['mix', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'transformers', 'mergekit', 'lm_eval', "
            "'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "--example-data" in out.stdout and "HEAVY []" in out.stdout, out.stdout + out.stderr
