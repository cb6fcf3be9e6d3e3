"""The decoder path on the tiny Llama family: real losses, real mergekit merges, real lm-eval.

Example data: 8 questions of the family's own "arith" task as {input, output}. The weights
are one scalar per model, so 8 of the task's 200 questions cannot overfit the score.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from llm_evo.mix import data_weights, load_examples, mix_models
from llm_evo.mix.losses import decoder_loss
from tests.cli.helpers import cli
from tests.mix.conftest import arith_examples

pytestmark = pytest.mark.slow

ENV_THREADS = {"OMP_NUM_THREADS": "1"}


def arith_accuracy(model_dir: str, tasks_dir: str) -> float:
    """lm-eval's acc on tiny_skill_arith (all 200 questions), HF backend on the CPU."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=32)
    manager = TaskManager(include_path=tasks_dir, include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["tiny_skill_arith"], task_manager=manager,
                                  bootstrap_iters=0, device="cpu")
    return out["results"]["tiny_skill_arith"]["acc,none"]


def test_loss_counts_only_output_tokens(tiny_models, tiny_family, tmp_path):
    """The loss equals transformers' own loss with the prompt tokens masked out (labels
    -100), token-weighted over examples; the skill's expert has the lower loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = arith_examples(tiny_family, 4)
    rows[0] = {**rows[0], "output": rows[0]["output"] + " ,"}  # a two-token output too
    data = load_examples(_write(tmp_path, rows))
    expert = decoder_loss(tiny_models["ft_arith"], data.examples, batch_size=3)

    tok = AutoTokenizer.from_pretrained(tiny_models["ft_arith"])
    lm = AutoModelForCausalLM.from_pretrained(tiny_models["ft_arith"], dtype=torch.float32)
    total, count = 0.0, 0
    for r in rows:
        n_ctx = len(tok(r["input"])["input_ids"])
        ids = torch.tensor([tok(r["input"] + r["output"])["input_ids"]])
        labels = ids.clone()
        labels[:, :n_ctx] = -100
        n_out = ids.shape[1] - n_ctx
        with torch.no_grad():
            total += float(lm(input_ids=ids, labels=labels).loss) * n_out
        count += n_out
    assert count > len(rows)  # the two-token output is in there
    assert expert == pytest.approx(total / count, rel=1e-4)
    assert expert < decoder_loss(tiny_models["ft_category"], data.examples)


def _write(tmp_path, rows):
    path = tmp_path / "ex.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_weights_tensor_by_tensor(tiny_models, tmp_path):
    """--weights 0.7,0.3 writes 0.7 a + 0.3 b for every tensor; --no-normalize keeps a sum
    of 1.2 as given (no division)."""
    a = load_file(f"{tiny_models['ft_arith']}/model.safetensors")
    b = load_file(f"{tiny_models['ft_category']}/model.safetensors")
    for weights, normalize in (((0.7, 0.3), True), ((0.6, 0.6), False)):
        out = tmp_path / f"mix_{normalize}"
        mix_models([tiny_models["ft_arith"], tiny_models["ft_category"]], weights, out,
                   normalize=normalize)
        mixed = load_file(out / "model.safetensors")
        assert set(mixed) == set(a)
        for name, tensor in mixed.items():
            want = weights[0] * a[name].float() + weights[1] * b[name].float()
            assert tensor.float().allclose(want, atol=1e-5), name


def test_data_weights_favour_the_skill_and_beat_the_uniform_mix(tiny_models, tiny_family,
                                                                 arith_jsonl, tmp_path):
    models = [tiny_models["ft_arith"], tiny_models["ft_category"]]
    proc = cli("llm-evo", "mix", *models, "--example-data", str(arith_jsonl),
               "--temperature", "5", "--out", str(tmp_path / "data_mix"), "--json",
               env=_env())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    w_arith, w_cat = result["weights"]
    loss_arith, loss_cat = result["losses"]
    assert loss_arith < loss_cat and w_arith > w_cat
    assert w_arith + w_cat == pytest.approx(1.0)
    assert result["temperature"] == 5.0 and result["out"] == str(tmp_path / "data_mix")

    mix_models(models, (0.5, 0.5), tmp_path / "uniform")
    tasks_dir = tiny_family["tasks_dir"]
    uniform = arith_accuracy(str(tmp_path / "uniform"), tasks_dir)
    data_mix = arith_accuracy(str(tmp_path / "data_mix"), tasks_dir)
    print(f"weights {result['weights']} losses {result['losses']} "
          f"arith acc uniform {uniform:.3f} data {data_mix:.3f}")
    assert data_mix > uniform + 0.1


def test_library_weights_match_the_cli_table(tiny_models, arith_jsonl, tmp_path):
    """The text output: a table with both models, their losses and weights, then the path."""
    models = [tiny_models["ft_arith"], tiny_models["ft_category"]]
    lib = data_weights(models, arith_jsonl, temperature=1.0)
    proc = cli("llm-evo", "mix", *models, "--example-data", str(arith_jsonl),
               "--temperature", "1", "--dry-run", env=_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["model", "loss", "weight"]
    assert lines[1].split() == ["ft_arith", f"{lib.losses[0]:.4f}", f"{lib.weights[0]:.4f}"]
    assert lines[2].split()[0] == "ft_category" and lines[3] == "temperature: 1"
    assert "wrote" not in proc.stdout


def _env() -> dict:
    import os

    return {**os.environ, **ENV_THREADS}
