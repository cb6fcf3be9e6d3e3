"""The tiny family's data: a toy generic language, two synthetic skills, their lm-eval tasks.

Part of the tiny family's builder (make_tiny_family.py, which says why the data looks as
it does); its source is hashed into the family's fingerprint with the builder's, so any
change here rebuilds the family. scripts/ is not a package: make_tiny_family.py loads this
file by path.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def generic_vocabulary() -> list[str]:
    """Every word of the generic language, in a fixed order."""
    return (DETERMINERS + ADJECTIVES + NOUNS + VERBS + PREPOSITIONS + ADVERBS + CONJUNCTIONS
            + ["."])


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


def make_skills(rng: random.Random, cfg: Mapping[str, Mapping[str, Any]]) -> list[Skill]:
    """The skills of the builder's PARAMS["skills"] (cfg), in a fixed order: their order
    is part of the family's identity."""
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



def pretrain_line(rng: random.Random, skills: Sequence[Skill], format_fraction: float) -> str:
    """One line of the base corpus: a generic sentence or (a format_fraction of the lines)
    a skill's format with noise."""
    if rng.random() < format_fraction:
        return rng.choice(skills).noise_line(rng)
    return generic_sentence(rng)


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
