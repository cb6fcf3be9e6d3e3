"""The tiny family's training: a word-level tokenizer, a small Llama, batches, an AdamW loop.

Part of the tiny family's builder (make_tiny_family.py); its source is hashed into the
family's fingerprint with the builder's, so any change here rebuilds the family. Written by
hand rather than with transformers' Trainer: a few dozen lines that are deterministic on
CPU step by step, with the schedule and replay mix the family needs. scripts/ is not a
package: make_tiny_family.py loads this file by path.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}

# One line of the base corpus, drawn from the generator it is given.
CorpusLine = Callable[[random.Random], str]

def train_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int) -> Any:
    """Train a word-level tokenizer; it prepends BOS, as training and lm-eval both expect."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS[k] for k in ("pad", "bos", "eos", "unk")]
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=specials
    )
    # Sorted, deduplicated words: the trainer's ties are then broken the same way every run.
    tok.train_from_iterator(sorted({w for t in texts for w in t.split()}), trainer=trainer)
    bos = SPECIAL_TOKENS["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        pad_token=SPECIAL_TOKENS["pad"],
        model_max_length=max_length,
    )


def new_model(tokenizer: Any, model_cfg: Mapping[str, Any]) -> Any:
    """A freshly initialised LlamaForCausalLM (untied embeddings, as mergekit's llama expects)
    of the shape model_cfg gives (hidden size, layers, heads, ...)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        initializer_range=0.02,
        **model_cfg,
    )
    return LlamaForCausalLM(config)


def pretrain_batches(tokenizer: Any, corpus_line: CorpusLine, rng: random.Random,
                     batch_size: int, seq_len: int) -> Iterator[list[list[int]]]:
    """Endless batches of BOS + packed base-corpus lines (corpus_line(rng) each), seq_len
    tokens each."""
    buffer: list[int] = []
    while True:
        rows = []
        for _ in range(batch_size):
            while len(buffer) < seq_len - 1:
                line = corpus_line(rng)
                buffer += tokenizer(line, add_special_tokens=False)["input_ids"]
                buffer.append(tokenizer.eos_token_id)
            rows.append([tokenizer.bos_token_id, *buffer[: seq_len - 1]])
            buffer = buffer[seq_len - 1:]
        yield rows


def skill_batches(tokenizer: Any, examples: Sequence[Any], corpus_line: CorpusLine,
                  rng: random.Random, batch_size: int,
                  replay_fraction: float) -> Iterator[list[list[int]]]:
    """Endless batches of skill examples (their `.text`) with base-corpus lines mixed back in.

    The replay includes the other skills' noisy formats, so the fine-tune learns to leave
    the model's behaviour on them alone: its task vector then barely disturbs theirs.
    """
    n_replay = round(batch_size * replay_fraction)
    order: list[int] = []
    while True:
        rows = []
        for _ in range(batch_size - n_replay):
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            rows.append(tokenizer(examples[order.pop()].text)["input_ids"])
        for _ in range(n_replay):
            rows.append(tokenizer(corpus_line(rng))["input_ids"])
        yield rows


def train(model: Any, batches: Iterator[list[list[int]]], pad_id: int, cfg: Mapping[str, Any],
          label: str) -> float:
    """AdamW, linear warmup, then cosine decay to 10% or constant; returns the smoothed loss."""
    import math

    import torch

    steps, warmup = cfg["steps"], cfg["warmup"]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(0.9, 0.98), eps=cfg["adam_eps"],
    )

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cfg["cosine"]:
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    smoothed = float("nan")
    start = time.perf_counter()
    for step in range(steps):
        rows = next(batches)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        smoothed = value if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * value
        if (step + 1) % 50 == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            print(f"  [{label}] step {step + 1}/{steps} loss {smoothed:.3f} ({elapsed:.0f}s)",
                  file=sys.stderr, flush=True)
    model.eval()
    return smoothed
