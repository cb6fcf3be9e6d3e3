"""An LLM as the evolution strategy (EvoLLM, arXiv 2402.18381; LLM-Evo-Merge).

Each generation the chat model sees the top-k genomes so far (worst to best, genes as
labelled 0..100 integers) and proposes the next mean; the population is Gaussian noise
around that mean, with a small step after an improvement and a large one otherwise.
A weak model's mean can walk away from everything the search has learned (issue #16: with
SmolLM2 as the LLM, LLM-Evo-Merge's design did worse than random search), so by default
`llm.best_share` of each generation is sampled around the best genome so far, and the
LLM's mean is held within a trust region around that best: its radius (a fraction of each
gene's range) halves after a generation whose LLM-guided samples did not beat the best,
and doubles, up to the whole range, when one did. The strategy then cannot do much worse
than a local search around its best, and a model that proposes well keeps a wide region. Every
failure mode of the model or the server ends in a documented fallback (the best genome so
far), recorded as an event, so a run never dies of a bad answer. See docs/llm-strategy.md.

Building the strategy is configuration only: no environment variable is read (the command
line resolves OPENAI_BASE_URL / OPENAI_API_KEY and passes them in) and no request is sent.
The first request is `start()`'s preflight, or else generation 1's `ask`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_evo.config import LLMConfig
from llm_evo.errors import ConfigError
from llm_evo.genome import SearchSpace
from llm_evo.strategies.base import Strategy, rng_from_state, rng_state
from llm_evo.strategies.llm.client import ChatClient, LLMCallError
from llm_evo.strategies.llm.parse import AnswerError, parse_answer
from llm_evo.strategies.llm.prompts import Layout, PromptTemplates

if TYPE_CHECKING:
    from llm_evo.config import RunConfig

logger = logging.getLogger(__name__)

OPENAI_DEFAULT_MODEL = "gpt-4o"  # LLM-Evo-Merge's --llm-model default
RADIUS_START, RADIUS_MIN, RADIUS_MAX = 0.5, 0.02, 1.0


class LLMStrategy(Strategy):
    """Ask/tell around a chat model's proposed mean genome.

    Population: `population_size` or the CMA-ES rule 4 + floor(3 ln n_genes). Generation 0
    is the uniform genotype plus sigma_high perturbations of it; later generations are the
    proposed mean plus sigma perturbations of it (sigma scaled by each gene's range).
    """

    name = "llm"

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        population_size: int | None = None,
        sigma_low: float = 0.05,
        sigma_high: float = 0.2,
        random_init: bool = False,
        llm: LLMConfig | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
    ) -> None:
        """`base_url` and `model` beat `llm.base_url` and `llm.model`; no URL at all means
        OpenAI's endpoint. `api_key` is held by the client only, never stored."""
        super().__init__(space, seed=seed, population_size=population_size)
        if sigma_low < 0 or sigma_high < 0 or not (
            math.isfinite(sigma_low) and math.isfinite(sigma_high)
        ):
            raise ConfigError("search.sigma_low/sigma_high: must be finite and >= 0")
        self.cfg = llm or LLMConfig()
        self.sigma_low = float(sigma_low)
        self.sigma_high = float(sigma_high)
        self.random_init = random_init
        base_url = base_url or self.cfg.base_url or None
        # As LLM-Evo-Merge: no URL means OpenAI's own endpoint, where gpt-4o is the default
        # model; a server of one's own has no default model to assume.
        model = model or self.cfg.model or (None if base_url else OPENAI_DEFAULT_MODEL)
        if not model:
            raise ConfigError("llm.model: the llm strategy needs a chat model (set --llm-model)")
        self.layout = Layout.from_space(space)
        self.templates = PromptTemplates(self.cfg.system_prompt, self.cfg.user_prompt)
        self.system_prompt = self.templates.render_system(self.layout, self.cfg.thought_max_chars)
        self.schema = self.layout.schema(self.cfg.thought_max_chars)
        self.client = ChatClient(
            base_url=base_url,
            api_key=api_key,
            model=model,
            timeout=self.cfg.timeout,
            temperature=self.cfg.temperature,
            max_tokens=self.cfg.max_tokens,
            response_format=self.cfg.response_format,
            backoff_retries=self.cfg.backoff_retries,
            backoff_base=self.cfg.backoff_base,
            backoff_max=self.cfg.backoff_max,
            notify=self.emit,
        )
        self.rng = np.random.default_rng(seed)
        self.best_genotype: np.ndarray | None = None
        self.best_fitness: float | None = None
        self.archive: list[tuple[np.ndarray, float]] = []  # top-k, best first
        self.history: list[list[dict[str, str]]] = []  # last N accepted exchanges
        self.improved = False
        self.force_sigma_high = False  # set by on_stagnation, for the next generation only
        self.radius = RADIUS_START  # the trust region around the best (fraction of a range)
        self._pending: list[np.ndarray] | None = None
        self._from_llm = 0  # how many of the pending genotypes the LLM's mean guided
        self.emit(
            "llm_config", model=model, base_url=self.client.url,
            response_format=self.cfg.response_format, temperature=self.cfg.temperature,
            top_k=self.cfg.top_k, history=self.cfg.history, max_retries=self.cfg.max_retries,
            population_size=self.population_size, rows=self.layout.rows,
            cols=self.layout.cols, system_prompt=self.system_prompt,
        )

    @classmethod
    def from_config(cls, space: SearchSpace, config: RunConfig,
                    secrets: Mapping[str, str] | None = None) -> LLMStrategy:
        """`secrets`: "api_key", and "base_url" (OPENAI_BASE_URL), which `llm.base_url`
        beats, both resolved by the command line so neither lands in a config."""
        s, secrets = config.search, secrets or {}
        return cls(space, seed=s.seed, population_size=s.population_size,
                   sigma_low=s.sigma_low, sigma_high=s.sigma_high,
                   random_init=config.random_init, llm=config.llm,
                   api_key=secrets.get("api_key"),
                   base_url=config.llm.base_url or secrets.get("base_url"))

    # ---- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        """The preflight, the strategy's first request. 401/403/404 stop the run here
        (ConfigError); an unreachable server only warns, since every generation can still
        fall back to the best genome."""
        try:
            self.client.preflight()
        except LLMCallError as exc:
            self.emit("llm_preflight", ok=False, reason=exc.reason, error=exc.detail)
            logger.warning("llm preflight failed (%s): %s; the run goes on and falls back "
                           "to the best genome while the server is unavailable",
                           exc.reason, exc.detail)
            return
        self.emit("llm_preflight", ok=True, reason=None, error=None)

    # ---- ask/tell -----------------------------------------------------------------------------
    def ask(self) -> list[np.ndarray]:
        if self._pending is None:
            if self.generation == 0:
                mean, sigma = self._start(), self.sigma_high
                self.emit("sigma", sigma=sigma, improved=False, reason="generation 0")
                self._pending = self._population(mean, sigma)
                self._from_llm = len(self._pending)
            else:
                mean = self._trusted(self._propose_mean())
                forced, self.force_sigma_high = self.force_sigma_high, False
                sigma = self.sigma_low if self.improved and not forced else self.sigma_high
                self.emit("sigma", sigma=sigma, improved=self.improved,
                          reason="kinship stagnation" if forced else
                          "best improved" if self.improved else "no improvement")
                n_best = (int(round(self.cfg.best_share * (self.population_size - 1)))
                          if self.best_genotype is not None else 0)
                around_llm = self._population(mean, sigma, self.population_size - n_best)
                around_best = self._population(self.best_genotype, sigma, n_best + 1)[1:] \
                    if n_best else []
                self._pending, self._from_llm = around_llm + around_best, len(around_llm)
        return [x.copy() for x in self._pending]

    def _trusted(self, mean: np.ndarray) -> np.ndarray:
        """The LLM's mean, moved into the trust region around the best genome (a box of
        `radius` x each gene's range)."""
        if not self.cfg.trust_region or self.best_genotype is None:
            return mean
        reach = self.radius * (self.space.upper - self.space.lower)
        return self.best_genotype + np.clip(mean - self.best_genotype, -reach, reach)

    def on_stagnation(self, reason: str) -> None:
        super().on_stagnation(reason)
        self.force_sigma_high = True

    def search_mean(self) -> np.ndarray | None:
        return None if self._pending is None else self._pending[0].copy()

    def _start(self) -> np.ndarray:
        """Generation 0's mean: the uniform merge, or a seeded random point with
        mergekit-evolve's `random_init: true`."""
        if self.random_init:
            return self.rng.uniform(self.space.lower, self.space.upper)
        return self.space.initial.copy()

    def _population(self, mean: np.ndarray, sigma: float, size: int | None = None
                    ) -> list[np.ndarray]:
        """The mean itself, then Gaussian perturbations clipped to the real gene ranges."""
        span = self.space.upper - self.space.lower
        # clip_range: every genotype stays on the 0..100 grid the model reads and writes,
        # even for genes CMA-ES may take beyond it (LLM-Evo-Merge clips to [0, 1] too).
        out = [self.space.clip_range(mean)]
        for _ in range((size or self.population_size) - 1):
            noise = self.rng.standard_normal(self.space.n_genes) * sigma * span
            out.append(self.space.clip_range(mean + noise))
        return out

    def tell(self, genotypes: list[np.ndarray], scores: list[float | None]) -> None:
        if len(genotypes) != len(scores):
            raise ValueError(f"tell() got {len(genotypes)} genotypes and {len(scores)} scores")
        previous = self.best_fitness
        for genotype, score in zip(genotypes, scores, strict=True):
            if score is None or not math.isfinite(score):
                continue
            self._archive(self.space.clip_range(genotype), float(score))
        if self.archive:
            self.best_genotype, self.best_fitness = self.archive[0][0].copy(), self.archive[0][1]
        self.improved = self.best_fitness is not None and (
            previous is None or self.best_fitness > previous
        )
        if self.generation > 0 and self.cfg.trust_region and previous is not None:
            guided = [s for s in scores[:self._from_llm] if s is not None and math.isfinite(s)]
            paid_off = bool(guided) and max(guided) > previous
            self.radius = (min(RADIUS_MAX, self.radius * 2) if paid_off
                           else max(RADIUS_MIN, self.radius / 2))
            self.emit("trust_region", radius=self.radius, paid_off=paid_off)
        self._pending = None
        self.generation += 1

    def _archive(self, genotype: np.ndarray, fitness: float) -> None:
        for i, (other, other_fitness) in enumerate(self.archive):
            if np.array_equal(other, genotype):
                if fitness > other_fitness:
                    self.archive[i] = (genotype, fitness)
                    self.archive.sort(key=lambda e: -e[1])
                return
        self.archive.append((genotype, fitness))
        self.archive.sort(key=lambda e: -e[1])  # stable: earlier wins ties
        del self.archive[self.cfg.top_k:]

    # ---- the model ----------------------------------------------------------------------------
    def _messages(self, user: str) -> list[dict[str, str]]:
        window = self.history[-self.cfg.history:] if self.cfg.history else []
        messages = [{"role": "system", "content": self.system_prompt}]
        for exchange in window:
            messages.extend(exchange)
        messages.append({"role": "user", "content": user})
        return messages

    def _propose_mean(self) -> np.ndarray:
        """The model's mean genome, or the best genome so far when it cannot give one.

        With `llm.block_rows`, one request per block of rows (EvoLLM's block-wise queries):
        each shows only its block's genes of the top-k genomes and answers only for them; a
        block the model cannot answer keeps the best genome's genes.
        """
        examples = [(g, f) for g, f in reversed(self.archive)]  # worst to best
        blocks = self.layout.blocks(self.cfg.block_rows)
        if len(blocks) == 1:
            values, reason, detail = self._ask_model(self.layout, examples, self.system_prompt,
                                                     self.schema, history=True)
            if values is None:
                return self._fallback(reason, detail)
            mean = self.layout.from_scale(values)
        else:
            mean = (self.best_genotype if self.best_genotype is not None
                    else self.space.initial).copy()
            answered = 0
            for first, end in blocks:
                sub = self.layout.block(first, end)
                a, b = first * self.layout.cols, end * self.layout.cols
                values, reason, detail = self._ask_model(
                    sub, [(g[a:b], f) for g, f in examples],
                    self.templates.render_system(sub, self.cfg.thought_max_chars),
                    sub.schema(self.cfg.thought_max_chars), history=False)
                if values is None:
                    self.emit("llm_fallback", reason=reason, detail=detail,
                              mean_source="best", rows=[first, end])
                    continue
                mean[a:b] = sub.from_scale(values)
                answered += 1
            if not answered:
                return self._fallback("no_block_answered",
                                      f"none of {len(blocks)} block(s) got a usable answer")
        self.emit("llm_mean", source="llm", genotype=mean.tolist(),
                  mean_genome=self.layout.grid(mean))
        return mean

    def _ask_model(self, layout: Layout, examples: list[tuple[np.ndarray, float]],
                   system: str, schema: dict[str, Any], history: bool
                   ) -> tuple[np.ndarray | None, str, str]:
        """(genes on the 0..100 scale, "", "") from one request and its retries, or
        (None, reason, detail) when there is no usable answer."""
        user = self.templates.render_user(
            layout, self.cfg.thought_max_chars, self.generation, self.best_fitness, examples
        )
        messages = self._messages(user) if history else [
            {"role": "system", "content": system}, {"role": "user", "content": user}]
        tries = self.cfg.max_retries + 1
        last_error = ""
        for attempt in range(1, tries + 1):
            try:
                completion = self.client.complete(messages, schema)
            except LLMCallError as exc:
                self._exchange(messages[-1]["content"], None, None, attempt, exc.detail,
                               outcome=exc.reason)
                return None, exc.reason, exc.detail
            try:
                thought, values = parse_answer(completion.text, layout.rows, layout.cols,
                                               layout.gene_labels())
            except AnswerError as exc:
                last_error = str(exc)
                if completion.finish_reason == "length":
                    last_error += (" (the answer hit the token limit and was cut off: send only "
                                   "the JSON object, with a short thought)")
                self._exchange(messages[-1]["content"], completion.text, None, attempt,
                               last_error, outcome="invalid", mode=completion.mode)
                messages = [
                    *messages,
                    {"role": "assistant", "content": completion.text},
                    {"role": "user", "content": (
                        f"Your answer was invalid: {last_error}. Reply again with only the "
                        f"JSON object: mean_genome must be {layout.rows} lists of "
                        f"{layout.cols} integers between 0 and 100."
                    )},
                ]
                continue
            self._exchange(messages[-1]["content"], completion.text, thought, attempt, None,
                           outcome="accepted", mode=completion.mode)
            if history:  # a clean, bounded copy of the answer, not the raw text
                short = thought[: self.cfg.thought_max_chars]
                answer = json.dumps({"thought": short,
                                     "mean_genome": layout.grid(layout.from_scale(values))})
                self.history.append([
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": answer},
                ])
                del self.history[: max(len(self.history) - self.cfg.history, 0)]
            return values, "", ""
        return None, "invalid_answers", f"{tries} invalid answer(s); last error: {last_error}"

    def _exchange(self, prompt: str, response: str | None, thought: str | None, attempt: int,
                  error: str | None, outcome: str, mode: str | None = None) -> None:
        self.emit(
            "llm_exchange", prompt=prompt, response=response, thought=thought,
            response_format=mode or self.client.mode, attempt=attempt, error=error,
            outcome=outcome,
        )

    def _fallback(self, reason: str, detail: str) -> np.ndarray:
        source = "best" if self.best_genotype is not None else "initial"
        mean = (self.best_genotype if self.best_genotype is not None else self.space.initial)
        logger.warning("llm strategy, generation %d: no usable proposal (%s: %s); "
                       "the mean falls back to the %s genome", self.generation, reason,
                       detail, "best" if source == "best" else "uniform")
        self.emit("llm_fallback", reason=reason, detail=detail, mean_source=source)
        self.emit("llm_mean", source=source, genotype=mean.tolist(),
                  mean_genome=self.layout.grid(mean))
        return mean.copy()

    # ---- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "rng": rng_state(self.rng),
            "best_genotype": None if self.best_genotype is None else self.best_genotype.tolist(),
            "best_fitness": self.best_fitness,
            "archive": [{"genotype": g.tolist(), "fitness": f} for g, f in self.archive],
            "history": self.history,
            "improved": self.improved,
            "force_sigma_high": self.force_sigma_high,
            "radius": self.radius,
            "from_llm": self._from_llm,
            "response_format": self.client.mode,
            "pending": None if self._pending is None else [x.tolist() for x in self._pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])
        self.rng = rng_from_state(state["rng"])
        best = state.get("best_genotype")
        self.best_genotype = None if best is None else np.asarray(best, dtype=np.float64)
        best_fitness = state.get("best_fitness")
        self.best_fitness = None if best_fitness is None else float(best_fitness)
        self.archive = [
            (np.asarray(e["genotype"], dtype=np.float64), float(e["fitness"]))
            for e in state.get("archive", [])
        ]
        self.history = [list(ex) for ex in state.get("history", [])]
        self.improved = bool(state.get("improved", False))
        self.force_sigma_high = bool(state.get("force_sigma_high", False))
        self.radius = float(state.get("radius", RADIUS_START))
        self._from_llm = int(state.get("from_llm", 0))
        if not self.client.forced:
            self.client.mode = state.get("response_format")
        pending = state.get("pending")
        self._pending = (
            None if pending is None else [np.asarray(x, dtype=np.float64) for x in pending]
        )
