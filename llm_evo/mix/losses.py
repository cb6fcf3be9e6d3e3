"""Per-model losses on example data: the evidence behind data-driven mixing weights.

Three kinds of model, told apart by `config.json`'s architecture:

* decoders (`*ForCausalLM`): mean negative log-likelihood of the `output` tokens given
  the `input`, over all output tokens of all examples (prompt tokens never count);
* rerankers (`*ForSequenceClassification`): each (query, passage) pair gets a relevance
  score; per positive, cross-entropy with that positive as the target class among the
  positive and the query's hard negatives;
* encoders (anything else, e.g. `BertModel` behind sentence-transformers): InfoNCE with
  in-batch negatives, scaled cosine similarity of pooled embeddings (sentence-transformers'
  MultipleNegativesRankingLoss, scale 20): each query's positive must beat every other
  passage of the batch, the other queries' positives and all hard negatives included.

Lower is better everywhere; losses are comparable across models of one kind because every
model sees the same examples in the same batches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_evo.errors import ConfigError
from llm_evo.mix.data import ExampleData, PairExample, TripleExample

ENCODER_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default


def model_kind(model: str) -> str:
    """"decoder", "reranker" or "encoder", from the model folder's config.json."""
    config = Path(model) / "config.json"
    if not config.is_file():
        raise ConfigError(f"{model}: not a model folder (no config.json)")
    try:
        archs = json.loads(config.read_text()).get("architectures") or []
    except json.JSONDecodeError:
        raise ConfigError(f"{config}: malformed JSON") from None
    if any(a.endswith("ForCausalLM") for a in archs):
        return "decoder"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "reranker"
    return "encoder"


def _torch_threads() -> None:
    """Respect OMP_NUM_THREADS: scoring shares CPUs with whoever else runs here."""
    import os

    import torch

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def decoder_loss(model: str, examples: Sequence[PairExample], device: str = "cpu",
                 batch_size: int = 8) -> float:
    """Mean NLL per output token. The prompt/output split follows lm-eval: tokenize the
    prompt and prompt+output, the output tokens are the ones past the prompt's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _torch_threads()
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(device).eval()
    rows = []
    for ex in examples:
        context = tok(ex.input)["input_ids"]
        whole = tok(ex.input + ex.output)["input_ids"]
        n_out = len(whole) - len(context)
        if n_out <= 0:
            raise ConfigError(f"example {ex.output!r}: the output adds no tokens")
        rows.append((whole, n_out))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), width), -100, dtype=torch.long)
            for i, (row, n_out) in enumerate(batch):
                ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
                targets[i, len(row) - n_out:len(row)] = torch.tensor(row[-n_out:])
            logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            # position t predicts token t+1
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tgt = targets[:, 1:].to(device)
            keep = tgt != -100
            picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total += float(-(picked[keep]).sum())
            count += int(keep.sum())
    return total / count


def _pooling_mode(model: str) -> str:
    """sentence-transformers' pooling (1_Pooling/config.json), mean when there is none."""
    config = Path(model) / "1_Pooling" / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


def _batches(examples: Sequence[TripleExample], batch_size: int):
    for start in range(0, len(examples), batch_size):
        yield examples[start:start + batch_size]


def encoder_loss(model: str, examples: Sequence[TripleExample], neg_number: int = 1,
                 device: str = "cpu", batch_size: int = 16, max_length: int = 128) -> float:
    """InfoNCE with in-batch negatives, averaged over every (query, positive) pair."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    _torch_threads()
    tok = AutoTokenizer.from_pretrained(model)
    enc = AutoModel.from_pretrained(model, dtype=torch.float32).to(device).eval()
    pooling = _pooling_mode(model)

    def embed(texts: list[str]) -> Any:
        inputs = tok(texts, padding=True, truncation=True, max_length=max_length,
                     return_tensors="pt").to(device)
        hidden = enc(**inputs).last_hidden_state
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    total, count, contrasted = 0.0, 0, False
    with torch.no_grad():
        for batch in _batches(examples, batch_size):
            passages: list[str] = []
            owner: list[int] = []  # which query a passage is a positive of (-1: a negative)
            for i, ex in enumerate(batch):
                passages += list(ex.pos)
                owner += [i] * len(ex.pos)
            for ex in batch:
                negs = list(ex.neg[:neg_number])
                passages += negs
                owner += [-1] * len(negs)
            q = embed([ex.query for ex in batch])
            p = embed(passages)
            scores = ENCODER_SCALE * q @ p.T  # (queries, passages)
            owner_t = torch.tensor(owner, device=scores.device)
            for i in range(len(batch)):
                mine = owner_t == i
                others = scores[i][~mine]
                contrasted = contrasted or others.numel() > 0
                for j in torch.nonzero(mine).flatten().tolist():
                    logits = torch.cat([scores[i, j:j + 1], others])
                    total += float(-torch.log_softmax(logits, dim=0)[0])
                    count += 1
    if not contrasted:
        raise ConfigError("example data: one query and no hard negatives leave nothing to "
                          "contrast; add examples or 'neg' passages")
    return total / count


def _relevance(logits: Any) -> Any:
    """One relevance score per pair: the logit with one label, else the last class's
    log-probability (the "relevant" class of a binary reranker)."""
    import torch

    if logits.shape[-1] == 1:
        return logits[:, 0]
    return torch.log_softmax(logits.float(), dim=-1)[:, -1]


def reranker_loss(model: str, examples: Sequence[TripleExample], neg_number: int = 1,
                  device: str = "cpu", batch_size: int = 32, max_length: int = 256) -> float:
    """Cross-entropy over [positive, hard negatives], averaged over every positive."""
    if neg_number < 1 or not any(ex.neg for ex in examples):
        raise ConfigError("example data: a reranker's loss needs hard negatives ('neg' "
                          "passages and --neg-number of at least 1)")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _torch_threads()
    tok = AutoTokenizer.from_pretrained(model)
    clf = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32)
    clf = clf.to(device).eval()

    pairs = [(ex.query, p) for ex in examples for p in (*ex.pos, *ex.neg[:neg_number])]
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            inputs = tok([a for a, _ in chunk], [b for _, b in chunk], padding=True,
                         truncation=True, max_length=max_length, return_tensors="pt")
            logits = clf(**inputs.to(device)).logits
            scores += _relevance(logits).tolist()
    total, count, at = 0.0, 0, 0
    for ex in examples:
        n_neg = len(ex.neg[:neg_number])
        row = scores[at:at + len(ex.pos) + n_neg]
        at += len(ex.pos) + n_neg
        negs = row[len(ex.pos):]
        if not negs:  # one class only: its cross-entropy is 0 whatever the model
            continue
        for s in row[:len(ex.pos)]:
            logits = torch.tensor([s, *negs])
            total += float(-torch.log_softmax(logits, dim=0)[0])
            count += 1
    return total / count


def model_loss(model: str, data: ExampleData, *, neg_number: int = 1,
               device: str = "cpu") -> float:
    """The loss of one model on the examples, by the model's kind."""
    kind = model_kind(model)
    if kind == "decoder":
        if data.kind != "pairs":
            raise ConfigError(f"{data.path}: {model} is a causal LM and needs "
                              "{input, output} examples")
        loss = decoder_loss(model, data.examples, device=device)
    else:
        if data.kind != "triples":
            raise ConfigError(f"{data.path}: {model} is an {kind} and needs "
                              "{query, pos, neg} examples")
        fn = encoder_loss if kind == "encoder" else reranker_loss
        loss = fn(model, data.examples, neg_number=neg_number, device=device)
    if not math.isfinite(loss):
        raise ConfigError(f"{model}: the loss on {data.path} is not finite")
    return loss
