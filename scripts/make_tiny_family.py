#!/usr/bin/env python
"""Build a tiny, deterministic Llama model family for the llm-evo demo and test suite.

The family is one generic base model and one fine-tune per synthetic skill, plus lm-eval
multiple-choice tasks (one per skill) backed by local JSONL files. It exists so merging
(mergekit) and scoring (lm-eval's HF backend) can be exercised end to end offline on a
2-core CPU in a few minutes, with a known-good answer: task arithmetic of the two
fine-tunes beats every parent on the mean over both tasks.

Design choices that make that answer robust:

* the two skills use disjoint vocabularies (numbers and ``,`` for counting on, the
  "arith" skill; made-up nouns, category words and ``;`` for "category"), so their task
  vectors touch mostly different embedding rows and interfere little;
* the base corpus already holds both question formats with random answers: the base
  knows the shapes (and scores at chance), so a fine-tune only learns the mapping itself;
* every answer is one token and the four choices of a question are all of the same kind,
  so a skill's accuracy does not move when the other skill shifts the output distribution;
* fine-tunes are short, replay the base corpus, use no weight decay and a large Adam eps,
  which keeps their deltas small and focused (task arithmetic needs that) and leaves
  embedding rows of tokens they never see untouched.

Usage: ``python scripts/make_tiny_family.py --out models/tiny [--force] [--in-place]
[--seed N]``: the family is built once into the cache outside the clone
(``$LLM_EVO_CACHE``, by default ``~/.cache/llm-evo/tiny/<fingerprint>``, as the SmolLM2
family is) and ``--out`` becomes a link to it, so a fresh clone, or a second clone, of the
same builder reuses it; ``--in-place`` builds into ``--out`` itself; ``--seed`` builds
another family of the same shape. Library use: ``build_linked(link)``, or
``build_family(out_dir)`` for a folder of your own; both return the ``family.json`` content
and reuse a build whose
fingerprint (sha256 of this file and of ``PARAMS``) matches.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

# Everything here is local; never let transformers/datasets/lm-eval reach for the Hub.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SCHEMA_VERSION = 1

# Every knob that changes the output. It is hashed into the fingerprint with this file.
PARAMS: dict[str, Any] = {
    "seed": 1234,
    "threads": 2,
    "model": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 8,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    },
    "tokenizer": {"vocab_size": 1000},
    "base": {"steps": 300, "batch_size": 32, "seq_len": 32, "lr": 3e-3, "warmup": 30,
             "cosine": True, "adam_eps": 1e-8, "weight_decay": 0.01, "format_fraction": 0.3},
    # Constant lr, no weight decay and a large Adam eps (tiny gradients give tiny updates):
    # each fine-tune's delta stays concentrated where its skill needs it.
    "finetune": {"steps": 150, "batch_size": 32, "lr": 1e-3, "warmup": 10, "cosine": False,
                 "adam_eps": 1e-5, "weight_decay": 0.0, "replay_fraction": 0.25},
    "skills": {
        "arith": {"task": "tiny_skill_arith", "n_numbers": 40, "max_facts": 4},
        "category": {"task": "tiny_skill_category", "n_entities": 48, "max_facts": 5},
    },
    "n_test": 200,
    "n_train_examples": 4000,
}

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}

# Generic text: a toy English grammar. Skill vocabularies below must not overlap with it.
DETERMINERS = ["the", "a", "every", "some", "this", "that", "my", "your", "our", "no"]
ADJECTIVES = """big small red blue green old young happy sad quick slow bright dark warm cold
soft hard loud quiet tall short heavy light clean dirty strong weak rich poor brave calm
wild gentle empty full sweet bitter busy lazy kind proud shy clever silly golden silver
wooden broken hidden famous strange lonely noisy tiny huge gray yellow purple""".split()
NOUNS = """dog cat bird horse cow child teacher farmer king queen river mountain house garden
road city forest tree flower book letter window door table chair boat ship train car
friend doctor baker painter sailor village castle bridge lake field hill cloud song story
lamp basket wagon cart apple bread cheese candle mirror blanket pillow ladder bucket
island valley desert meadow harbor market school tower kitchen palace prince princess
soldier hunter merchant student wizard giant dragon rabbit mouse goat sheep wolf bear
fox owl duck frog snake""".split()
VERBS = """sees likes finds follows helps watches carries builds paints visits remembers
loves leaves meets calls opens closes pushes pulls holds drops wants brings keeps reads
writes sells buys hides chases feeds washes draws throws catches greets teaches guards
fixes""".split()
PREPOSITIONS = ["near", "under", "behind", "beside", "inside", "across", "over", "beyond"]
ADVERBS = ["today", "again", "slowly", "quickly", "often", "never", "always", "together"]
CONJUNCTIONS = ["and", "but", "while", "because"]

# Skill "category": made-up nouns, each in one of four categories.
CATEGORIES = ["gem", "herb", "fish", "tool"]
_ONSETS = ["bl", "br", "dr", "fl", "gr", "kr", "pl", "sk", "sn", "st", "tr", "vr", "zl", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "y"]
_CODAS = ["x", "k", "p", "m", "n", "rv", "zz", "sh", "th", "lk"]


@dataclass(frozen=True)
class Example:
    """One multiple-choice question: ``context + " " + choices[gold]`` is the right text."""

    context: str
    choices: tuple[str, ...]
    gold: int

    @property
    def text(self) -> str:
        return f"{self.context} {self.choices[self.gold]}"


# --------------------------------------------------------------------------- data


def generic_sentence(rng: random.Random) -> str:
    """One sentence of the base model's generic toy language."""

    def noun_phrase() -> list[str]:
        words = [rng.choice(DETERMINERS)]
        if rng.random() < 0.5:
            words.append(rng.choice(ADJECTIVES))
        words.append(rng.choice(NOUNS))
        return words

    words = noun_phrase() + [rng.choice(VERBS)] + noun_phrase()
    if rng.random() < 0.4:
        words += [rng.choice(PREPOSITIONS)] + noun_phrase()
    if rng.random() < 0.3:
        words.append(rng.choice(ADVERBS))
    if rng.random() < 0.2:
        words += [rng.choice(CONJUNCTIONS)] + noun_phrase() + [rng.choice(VERBS)] + noun_phrase()
    return " ".join(words + ["."])


def made_up_entities(n: int, rng: random.Random) -> list[str]:
    """Pronounceable nonce nouns that collide with no other vocabulary word."""
    taken = set(DETERMINERS + ADJECTIVES + NOUNS + VERBS + PREPOSITIONS + ADVERBS
                + CONJUNCTIONS + CATEGORIES)
    names: list[str] = []
    while len(names) < n:
        name = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


class Skill:
    """A synthetic skill: chains of facts; a question asks for the last fact's answer."""

    name: str
    task: str
    separator: str
    max_facts: int

    def fact(self, rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
        """Return (question prefix, true answer, candidate answers incl. the true one)."""
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        """Every word the skill uses; must be disjoint from the other vocabularies."""
        raise NotImplementedError

    def example(self, rng: random.Random) -> Example:
        """A chain of 1..max_facts true facts; the answer of the last one is asked for.

        Earlier facts make the contexts varied (so test questions are unseen strings)
        without making the skill harder: each fact stands on its own.
        """
        n = rng.randint(1, self.max_facts)
        parts = []
        for _ in range(n - 1):
            prefix, answer, _ = self.fact(rng)
            parts.append(f"{prefix} {answer} {self.separator}")
        prefix, answer, candidates = self.fact(rng)
        distractors = rng.sample([c for c in candidates if c != answer], 3)
        choices = [answer, *distractors]
        rng.shuffle(choices)
        return Example(" ".join([*parts, prefix]), tuple(choices), choices.index(answer))

    def noise_line(self, rng: random.Random) -> str:
        """The skill's format with random answers, for the base model's corpus.

        The base thus knows the vocabulary and the shape of the questions but not the
        answers (it scores at chance), so a fine-tune only has to learn the mapping itself:
        smaller task vectors that add up without wrecking each other.
        """
        n = rng.randint(1, self.max_facts)
        facts = []
        for _ in range(n):
            prefix, _, candidates = self.fact(rng)
            facts.append(f"{self.scramble(prefix, rng)} {rng.choice(self.answer_space())}")
        return f" {self.separator} ".join(facts)

    def scramble(self, prefix: str, rng: random.Random) -> str:
        """Destroy whatever in a question prefix gives its answer away (default: nothing)."""
        return prefix

    def answer_space(self) -> list[str]:
        raise NotImplementedError


class CountSkill(Skill):
    """The arithmetic skill, counting on: ``12 13 14`` is followed by ``15``.

    Distractors are nearby numbers. (Two-operand addition was tried first: it needs far
    more fine-tuning steps to learn, and its task vector then wrecked the other skill.)
    """

    separator = ","

    def __init__(self, name: str, task: str, n_numbers: int, max_facts: int) -> None:
        self.name, self.task, self.max_facts = name, task, max_facts
        self.n_numbers = n_numbers

    def fact(self, rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
        k = rng.randint(2, 4)
        start = rng.randint(0, self.n_numbers - 1 - k)
        answer = start + k
        lo = max(0, min(answer - 3, self.n_numbers - 7))
        candidates = tuple(str(v) for v in range(lo, lo + 7))
        return " ".join(str(v) for v in range(start, start + k)), str(answer), candidates

    def scramble(self, prefix: str, rng: random.Random) -> str:
        return " ".join(rng.choice(self.answer_space()) for _ in prefix.split())

    def answer_space(self) -> list[str]:
        return [str(v) for v in range(self.n_numbers)]

    def vocabulary(self) -> list[str]:
        return [*self.answer_space(), self.separator]


class CategorySkill(Skill):
    """Made-up facts, ``blick gem``: which of four categories a nonce noun belongs to.

    The category follows the noun directly, so (like counting on) the answer is read off
    the last token. With a ``blick : gem`` format, the answer has to be fetched by attention
    and the counting task vector disturbed that more often in merges.
    """

    separator = ";"

    def __init__(self, name: str, task: str, n_entities: int, max_facts: int,
                 rng: random.Random) -> None:
        self.name, self.task, self.max_facts = name, task, max_facts
        self.entities = made_up_entities(n_entities, rng)
        self.mapping = {e: CATEGORIES[i % len(CATEGORIES)] for i, e in enumerate(self.entities)}

    def fact(self, rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
        entity = rng.choice(self.entities)
        return entity, self.mapping[entity], tuple(CATEGORIES)

    def answer_space(self) -> list[str]:
        return list(CATEGORIES)

    def vocabulary(self) -> list[str]:
        return [*self.entities, *CATEGORIES, self.separator]


def make_skills(rng: random.Random) -> list[Skill]:
    """The skills, in a fixed order (their order is part of the family's identity)."""
    cfg = PARAMS["skills"]
    return [
        CountSkill("arith", **cfg["arith"]),
        CategorySkill("category", **cfg["category"], rng=rng),
    ]


def split_examples(skill: Skill, rng: random.Random, n_train: int,
                   n_test: int) -> tuple[list[Example], list[Example]]:
    """Train and test sets from one distribution, with no test text seen in training."""
    train = [skill.example(rng) for _ in range(n_train)]
    seen = {ex.text for ex in train}
    test: list[Example] = []
    tries = 0
    while len(test) < n_test:
        tries += 1
        if tries > 100 * n_test:
            raise RuntimeError(f"cannot draw {n_test} held-out examples for {skill.name}")
        ex = skill.example(rng)
        if ex.text not in seen:
            seen.add(ex.text)
            test.append(ex)
    return train, test


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str]) -> Any:
    """Train a word-level tokenizer; it prepends BOS, as training and lm-eval both expect."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS[k] for k in ("pad", "bos", "eos", "unk")]
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        vocab_size=PARAMS["tokenizer"]["vocab_size"], min_frequency=1, special_tokens=specials
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
        model_max_length=PARAMS["model"]["max_position_embeddings"],
    )


# --------------------------------------------------------------------------- training


def new_model(tokenizer: Any) -> Any:
    """A freshly initialised LlamaForCausalLM (untied embeddings, as mergekit's llama expects)."""
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
        **PARAMS["model"],
    )
    return LlamaForCausalLM(config)


def pretrain_line(rng: random.Random, skills: Sequence[Skill]) -> str:
    """One line of the base corpus: a generic sentence, or a skill's format with noise."""
    if rng.random() < PARAMS["base"]["format_fraction"]:
        return rng.choice(skills).noise_line(rng)
    return generic_sentence(rng)


def pretrain_batches(tokenizer: Any, skills: Sequence[Skill], rng: random.Random,
                     batch_size: int, seq_len: int) -> Iterator[list[list[int]]]:
    """Endless batches of BOS + packed base-corpus lines, seq_len tokens each."""
    buffer: list[int] = []
    while True:
        rows = []
        for _ in range(batch_size):
            while len(buffer) < seq_len - 1:
                line = pretrain_line(rng, skills)
                buffer += tokenizer(line, add_special_tokens=False)["input_ids"]
                buffer.append(tokenizer.eos_token_id)
            rows.append([tokenizer.bos_token_id, *buffer[: seq_len - 1]])
            buffer = buffer[seq_len - 1:]
        yield rows


def skill_batches(tokenizer: Any, examples: Sequence[Example], skills: Sequence[Skill],
                  rng: random.Random, batch_size: int,
                  replay_fraction: float) -> Iterator[list[list[int]]]:
    """Endless batches of skill examples with base-corpus lines mixed back in.

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
            rows.append(tokenizer(pretrain_line(rng, skills))["input_ids"])
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


# --------------------------------------------------------------------------- outputs


def write_task(tasks_dir: Path, task: str, examples: Sequence[Example]) -> Path:
    """Write one lm-eval multiple-choice task: a JSONL test split and its YAML."""
    data = (tasks_dir / f"{task}.jsonl").resolve()
    with data.open("w") as fh:
        for ex in examples:
            fh.write(json.dumps({"context": ex.context, "choices": list(ex.choices),
                                 "gold": ex.gold}) + "\n")
    write_task_yaml(tasks_dir, task)
    return data


def write_task_yaml(tasks_dir: Path, task: str) -> None:
    """The YAML points at its JSONL by absolute path (lm-eval resolves data relative to cwd)."""
    data = (tasks_dir / f"{task}.jsonl").resolve()
    yaml_text = f"""# Generated by scripts/make_tiny_family.py; do not edit.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
    (tasks_dir / f"{task}.yaml").write_text(yaml_text)


def fingerprint() -> str:
    """sha256 over this file's source and PARAMS: any change to either forces a rebuild."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(json.dumps(PARAMS, sort_keys=True).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """Serialise concurrent builders (parallel test workers) of the same out_dir."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_family(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "family.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _relocate(out_dir: Path, family: dict[str, Any]) -> dict[str, Any]:
    """A cached family moved or copied elsewhere: repoint paths (YAMLs hold absolute paths)."""
    tasks_dir = out_dir / "tasks"
    for task in family["tasks"].values():
        write_task_yaml(tasks_dir, task["name"])
        task["data"] = str((tasks_dir / f"{task['name']}.jsonl").resolve())
        task["yaml"] = str((tasks_dir / f"{task['name']}.yaml").resolve())
    family["root"] = str(out_dir)
    family["tasks_dir"] = str(tasks_dir.resolve())
    for model in family["models"].values():
        model["path"] = str((out_dir / model["dir"]).resolve())
    (out_dir / "family.json").write_text(json.dumps(family, indent=2) + "\n")
    return family


def build_family(out_dir: Path, force: bool = False) -> dict[str, Any]:
    """Build the family into out_dir, or return the cached family.json if it is current.

    Safe to call from several processes at once: one builds, the others wait and reuse.
    """
    out_dir = Path(out_dir).resolve()
    fp = fingerprint()
    cached = _read_family(out_dir)
    if not force and cached and cached.get("fingerprint") == fp and cached.get("root") == str(
        out_dir
    ):
        return cached
    with _build_lock(out_dir):
        cached = _read_family(out_dir)
        if not force and cached and cached.get("fingerprint") == fp:
            if cached.get("root") != str(out_dir):
                cached = _relocate(out_dir, cached)
            return cached
        return _build(out_dir, fp)


def build_linked(link: Path, force: bool = False) -> dict[str, Any]:
    """Build (or reuse) the family in the cache outside the clone, keyed by the fingerprint
    (family_cache.py says why), and point `link` (models/tiny) at it. Safe from several
    processes at once (pytest-xdist workers): one builds, the others wait and reuse it."""
    cache = _family_cache()
    folder = cache.cache_root() / "tiny" / fingerprint()[:16]
    family = build_family(folder, force=force)
    with _build_lock(Path(link).absolute()):
        cache.point_link(link, folder)
    return family


def _family_cache() -> ModuleType:
    """scripts/family_cache.py (scripts/ is not a package)."""
    path = Path(__file__).resolve().parent / "family_cache.py"
    spec = importlib.util.spec_from_file_location("_family_cache", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(out_dir: Path, fp: str) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    torch.set_num_threads(PARAMS["threads"])
    torch.use_deterministic_algorithms(True)
    seed = PARAMS["seed"]

    if out_dir.exists():
        shutil.rmtree(out_dir)
    tasks_dir = out_dir / "tasks"
    tasks_dir.mkdir(parents=True)

    skills = make_skills(random.Random(seed))
    splits = {
        s.name: split_examples(s, random.Random(f"{seed}-{s.name}-data"),
                               PARAMS["n_train_examples"], PARAMS["n_test"])
        for s in skills
    }
    generic_vocab = (DETERMINERS + ADJECTIVES + NOUNS + VERBS + PREPOSITIONS + ADVERBS
                     + CONJUNCTIONS + ["."])
    vocab_sets = [set(generic_vocab)] + [set(s.vocabulary()) for s in skills]
    for i, a in enumerate(vocab_sets):
        for b in vocab_sets[i + 1:]:
            assert not a & b, f"vocabularies overlap: {sorted(a & b)}"
    tokenizer = train_tokenizer(generic_vocab + [w for s in skills for w in s.vocabulary()])

    def save(model: Any, name: str) -> Path:
        path = out_dir / name
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        return path

    timings: dict[str, float] = {}
    torch.manual_seed(seed)
    base = new_model(tokenizer)
    cfg = PARAMS["base"]
    t = time.perf_counter()
    base_loss = train(
        base,
        pretrain_batches(tokenizer, skills, random.Random(f"{seed}-base"), cfg["batch_size"],
                         cfg["seq_len"]),
        tokenizer.pad_token_id, cfg, "base",
    )
    timings["base"] = time.perf_counter() - t
    save(base, "base")
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}

    models: dict[str, dict[str, Any]] = {
        "base": {"dir": "base", "role": "base", "skill": None, "train_loss": round(base_loss, 4)}
    }
    cfg = PARAMS["finetune"]
    for skill in skills:
        torch.manual_seed(seed)
        model = new_model(tokenizer)
        model.load_state_dict(base_state)
        t = time.perf_counter()
        loss = train(
            model,
            skill_batches(tokenizer, splits[skill.name][0], skills,
                          random.Random(f"{seed}-{skill.name}"), cfg["batch_size"],
                          cfg["replay_fraction"]),
            tokenizer.pad_token_id, cfg, f"ft_{skill.name}",
        )
        timings[f"ft_{skill.name}"] = time.perf_counter() - t
        name = f"ft_{skill.name}"
        save(model, name)
        delta = sum(float((v - base_state[k]).float().norm() ** 2)
                    for k, v in model.state_dict().items()) ** 0.5
        ref = sum(float(v.float().norm() ** 2) for v in base_state.values()) ** 0.5
        models[name] = {"dir": name, "role": "finetune", "skill": skill.name,
                        "train_loss": round(loss, 4), "delta_rel_norm": round(delta / ref, 4)}

    tasks: dict[str, dict[str, Any]] = {}
    for skill in skills:
        data = write_task(tasks_dir, skill.task, splits[skill.name][1])
        tasks[skill.name] = {"name": skill.task, "data": str(data),
                             "yaml": str((tasks_dir / f"{skill.task}.yaml").resolve()),
                             "n_test": len(splits[skill.name][1]), "num_choices": 4,
                             "metric": "acc", "expert": f"ft_{skill.name}"}
    for info in models.values():
        info["path"] = str((out_dir / info["dir"]).resolve())

    timings["total"] = time.perf_counter() - t0
    family = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fp,
        "root": str(out_dir),
        "tasks_dir": str(tasks_dir.resolve()),
        "base": "base",
        "finetunes": [f"ft_{s.name}" for s in skills],
        "models": models,
        "tasks": tasks,
        "task_names": [s.task for s in skills],
        "architecture": "LlamaForCausalLM",
        "params": PARAMS,
        "build_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    # Written last: its presence (with this fingerprint) marks a complete build.
    (out_dir / "family.json").write_text(json.dumps(family, indent=2) + "\n")
    return family


# --------------------------------------------------------------------------- evaluation


def evaluate(models: Mapping[str, Any], tasks_dir: Path, task_names: Sequence[str],
             batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Accuracy of each model (a path or a loaded HF model) on each task, via lm-eval.

    Uses lm-eval's HF backend on CPU exactly as the search does, so these numbers are the
    ones the demo will see.
    """
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(PARAMS["threads"])
    task_manager = TaskManager(include_path=str(tasks_dir))
    scores: dict[str, dict[str, float]] = {}
    for label, model in models.items():
        if isinstance(model, (str, Path)):
            tokenizer = AutoTokenizer.from_pretrained(str(model))
            model = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
        else:
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        model.eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=batch_size)
        result = simple_evaluate(model=lm, tasks=list(task_names), task_manager=task_manager,
                                 log_samples=False, verbosity="ERROR")
        assert result is not None
        scores[label] = {t: float(result["results"][t]["acc,none"]) for t in task_names}
    return scores


def format_table(scores: Mapping[str, Mapping[str, float]], task_names: Sequence[str]) -> str:
    """A plain-text accuracy table with a mean column."""
    width = max(len("model"), *(len(k) for k in scores))
    head = f"{'model':<{width}}  " + "  ".join(f"{t:>20}" for t in task_names) + "      mean"
    lines = [head, "-" * len(head)]
    for label, row in scores.items():
        vals = [row[t] for t in task_names]
        lines.append(f"{label:<{width}}  " + "  ".join(f"{v:>20.3f}" for v in vals)
                     + f"  {sum(vals) / len(vals):>8.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/tiny"))
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--in-place", action="store_true",
                        help="build into --out itself, not into the cache behind a link")
    parser.add_argument("--no-eval", action="store_true", help="skip the lm-eval table")
    parser.add_argument("--seed", type=int, default=PARAMS["seed"],
                        help="another family of the same shape (other facts, other "
                             "fine-tunes): to check a search result is not one build's luck")
    args = parser.parse_args(argv)
    PARAMS["seed"] = args.seed  # hashed into the fingerprint: each seed has its own cache

    t0 = time.perf_counter()
    build = build_family if args.in_place else build_linked
    family = build(args.out, force=args.force)
    built = time.perf_counter() - t0
    print(f"family at {family['root']} (fingerprint {family['fingerprint'][:12]}, "
          f"{built:.1f}s)")
    if not args.no_eval:
        t1 = time.perf_counter()
        paths = {name: info["path"] for name, info in family["models"].items()}
        scores = evaluate(paths, Path(family["tasks_dir"]), family["task_names"])
        print(format_table(scores, family["task_names"]))
        print(f"eval {time.perf_counter() - t1:.1f}s, total {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
