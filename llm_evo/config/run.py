"""The run configuration: frozen pydantic models validated once, at the edge.

The `genome:`/`tasks:` sections and top-level lm-eval knobs are exactly mergekit-evolve's
schema, so its configs load unchanged; `search:`, `evaluation:`, `llm:`, `kinship:` and
`wandb:` are llm-evo's own optional sections. Every validation failure becomes a
`ConfigError` whose one-line message names the offending field and file. The scoring
sections, reading and overrides are shared with pool configs (see base.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from llm_evo.config.base import Frozen, ScoringConfig
from llm_evo.model_ref import canonical_model_ref

# passthrough: mergekit's layer-stacking method, the merge of a data-flow genome (dataflow:)
MergeMethod = Literal["linear", "task_arithmetic", "ties", "dare_ties", "slerp", "passthrough"]
METHODS_NEEDING_BASE = ("task_arithmetic", "ties", "dare_ties")
# Any form mergekit's ModelReference accepts, kept as its string form (see model_ref.py).
ModelRefStr = Annotated[str, BeforeValidator(canonical_model_ref)]


class DataFlowConfig(Frozen):
    """A data-flow genome (docs/dataflow.md): which layers run, in what order.

    The path has `repeats` x models x layers slots: repeat 1 is model 1's layers in order,
    then model 2's, ..., then repeat 2 likewise. Each slot has a use gene (used when > 0,
    Sakana's indicator array); with `scale`, each ordered pair of models (i, j) has a gene
    that multiplies the `scale_filter` tensors (the input norm) of a layer of model j
    entered from a layer of model i (Sakana's W matrix, realised in weights).
    """

    repeats: int = Field(default=2, ge=1)
    # [first, end) of each model's layers that enter the path; None: all of them
    layers: tuple[int, int] | None = None
    # a candidate whose path uses more layers is a failed candidate; None: 2 x a model's
    max_layers: int | None = Field(default=None, ge=1)
    scale: bool = True
    scale_range: tuple[float, float] = (0.5, 1.5)
    scale_filter: str = "input_layernorm"
    # which model gives the embeddings, final norm and head: `path` (the path's first
    # layer's model gives the embeddings, its last layer's the norm and head) or one of
    # genome.models, as written there
    embeddings: str = "path"

    @model_validator(mode="after")
    def _ranges(self) -> DataFlowConfig:
        if self.layers is not None and not 0 <= self.layers[0] < self.layers[1]:
            raise ValueError(f"genome.dataflow.layers: [{self.layers[0]}, {self.layers[1]}] "
                             "is not a [first, end) range of layers")
        low, high = self.scale_range
        if not 0 <= low < high:
            raise ValueError(f"genome.dataflow.scale_range: [{low}, {high}] needs "
                             "0 <= low < high")
        return self


class GenomeConfig(Frozen):
    """mergekit-evolve's `genome:` section, field for field, plus `dataflow:` (llm-evo's)."""

    models: list[ModelRefStr] = Field(min_length=1)
    merge_method: MergeMethod
    base_model: ModelRefStr | None = None
    tokenizer_source: str | None = None
    layer_granularity: int = Field(default=0, ge=0)
    normalize: bool | None = None
    allow_negative_weights: bool = False
    smooth: bool = False
    filters: list[str] | None = None
    dataflow: DataFlowConfig | None = None

    @model_validator(mode="after")
    def _method_needs(self) -> GenomeConfig:
        if (self.merge_method == "passthrough") != (self.dataflow is not None):
            raise ValueError("genome.dataflow and merge_method: passthrough go together (a "
                             "data-flow genome stacks layers with mergekit's passthrough)")
        if self.dataflow is not None:
            for name in ("base_model", "filters", "layer_granularity", "smooth"):
                if getattr(self, name):
                    raise ValueError(f"genome.{name} does not apply to a data-flow genome "
                                     "(genome.dataflow)")
            emb = self.dataflow.embeddings
            if emb != "path" and canonical_model_ref(emb) not in self.models:
                raise ValueError(f"genome.dataflow.embeddings: {emb} is neither `path` nor one "
                                 "of genome.models")
        if self.merge_method in METHODS_NEEDING_BASE and not self.base_model:
            raise ValueError(f"genome.base_model is required for merge_method {self.merge_method}")
        if self.merge_method == "slerp":
            n = len(self.models)
            if n < 2:  # with more, each layer group slerps its two top-weighted models
                raise ValueError(f"genome.models: slerp needs at least 2 models, got {n}")
            if self.smooth:
                raise ValueError("genome.smooth is not supported for slerp")
            if n > 2 and self.filters:
                raise ValueError("genome.filters is not supported for slerp over more than "
                                 "2 models")
        if len(set(self.models)) != len(self.models):
            raise ValueError("genome.models lists a model twice")
        return self

    @property
    def effective_normalize(self) -> bool:
        """mergekit-evolve's default: normalise for linear, ties and dare_ties."""
        if self.normalize is not None:
            return self.normalize
        return self.merge_method in ("linear", "ties", "dare_ties")


# The default strategy, chosen by bench/search_quality.py (docs/performance.md): on the 48-gene
# genome at 48 evaluations, ctf-gp (optuna's GP in tied spaces of the genome, coarsest first)
# is +0.150 above CMA-ES (mergekit-evolve's) on the tiny family (one standard error 0.042),
# and +0.063 and +0.000 on two other builds of the family (other seeds, nearer the score's
# ceiling); it leads at 16 and 32 evaluations on all three, and it can search a Pareto front.
# A genome without layer groups has one level: it is `gp` there. `--sigma0` still selects cma.
DEFAULT_STRATEGY = "ctf-gp"


class SearchConfig(Frozen):
    """`init: data` starts the search at data-driven weights: softmax(-loss / temperature)
    of each model's loss on `example_data` (JSONL {input, output}; see docs/mix.md)."""

    strategy: str = DEFAULT_STRATEGY
    # weighted: one fitness, the weighted sum of task scores (mergekit-evolve's). pareto:
    # each task is an objective; the ledger keeps the non-dominated set (pareto/ folder).
    objective: Literal["weighted", "pareto"] = "weighted"
    population_size: int | None = Field(default=None, ge=2)
    max_generations: int = Field(default=10, ge=1)
    # mergekit-evolve's --max-fevals: a budget of candidate evaluations; the run stops after
    # the generation that reaches it (whole generations, as pycma counts), or after
    # max_generations, whichever comes first. Parents are scored outside the budget.
    max_fevals: int | None = Field(default=None, ge=1)
    seed: int = 42
    sigma0: float = Field(default=0.2, gt=0)
    sigma_low: float = Field(default=0.05, ge=0)
    sigma_high: float = Field(default=0.2, ge=0)
    evaluate_parents: bool = True
    init: Literal["uniform", "data"] = "uniform"
    example_data: str | None = None
    temperature: float = Field(default=5.0, gt=0)
    # ctf and ctf-gp (coarse-to-fine): generations spent in each tied level before the
    # next; unset, each strategy's own (ctf 3, ctf-gp 1: bench/search_quality.py)
    generations_per_level: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _init_data(self) -> SearchConfig:
        if self.init == "data" and not self.example_data:
            raise ValueError("search.init: data needs search.example_data (a JSONL file)")
        if self.example_data and self.init != "data":
            raise ValueError("search.example_data is set but search.init is not data")
        return self


class LLMConfig(Frozen):
    """The LLM strategy's chat model and how hard to try it (see docs/llm-strategy.md).

    There is deliberately no api_key field: keys come from --api-key or OPENAI_API_KEY, so
    they never land in a config file, a stored config or W&B.
    """

    model: str | None = None
    base_url: str | None = None
    max_retries: int = Field(default=3, ge=0)
    top_k: int = Field(default=5, ge=1)
    temperature: float = Field(default=0.7, ge=0)
    history: int = Field(default=2, ge=0)
    timeout: float = Field(default=60.0, gt=0)
    system_prompt: str | None = None
    user_prompt: str | None = None
    max_tokens: int = Field(default=1024, ge=16)
    thought_max_chars: int = Field(default=400, ge=0)
    response_format: Literal["auto", "json_schema", "json_object", "text"] = "auto"
    # What the history knows is never thrown away for the LLM's mean (docs/llm-strategy.md):
    # this share of each generation is sampled around the best genome so far, and the LLM's
    # mean is kept within a trust region around that best, which halves each generation
    # the LLM's samples do not improve the best and doubles when they do. best_share: 0 and
    # trust_region: false is LLM-Evo-Merge's design (the LLM's mean replaces everything).
    best_share: float = Field(default=0.5, ge=0, le=1)
    trust_region: bool = True
    # EvoLLM's block-wise queries for large genomes: one request per block of this many
    # rows (layer groups), each showing only its block's genes; the rest of the mean is
    # the best genome's. None: the whole genome in one request.
    block_rows: int | None = Field(default=None, ge=1)
    backoff_retries: int = Field(default=4, ge=0)
    backoff_base: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=60.0, gt=0)


class KinshipConfig(Frozen):
    """Kinship-aware search (see docs/kinship-search.md).

    The search sees `score - penalty * max(0, k - threshold)`, k the candidate's mean kinship
    to the reference set (`against`); for `ed`, a distance, closeness is what is penalised:
    `max(0, threshold - k)`. `stagnation`: when the population's mean pairwise kinship stays
    beyond it for `stagnation_generations`, the strategy widens its search. Kinship is
    measured when `enabled` is true, or, by default, when a penalty or stagnation is set.
    """

    metric: Literal["cs", "pcc", "ed"] = "cs"
    penalty: float = Field(default=0.0, ge=0)
    threshold: float = 0.9
    against: Literal["elite", "population", "mean"] = "elite"
    stagnation: float | None = None
    stagnation_generations: int = Field(default=3, ge=1)
    enabled: bool | None = None
    elite_size: int = Field(default=5, ge=1)
    sketch_size: int = Field(default=32768, ge=1024)

    @model_validator(mode="after")
    def _consistent(self) -> KinshipConfig:
        if self.enabled is False and (self.penalty > 0 or self.stagnation is not None):
            raise ValueError("kinship.enabled is false, but kinship.penalty or "
                             "kinship.stagnation asks for kinship")
        return self

    @property
    def active(self) -> bool:
        """Whether the run measures kinship at all (one extra read of the models at start)."""
        if self.enabled is not None:
            return self.enabled
        return self.penalty > 0 or self.stagnation is not None


class WandbConfig(Frozen):
    """Weights & Biases logging (see llm_evo/report/tracking.py); off unless enabled.

    `mode` None defers to WANDB_MODE; "offline" keeps everything on disk for `wandb sync`.
    There is no key field: W&B reads WANDB_API_KEY or `wandb login` itself.
    """

    enabled: bool = False
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    notes: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None


class RunConfig(ScoringConfig):
    """A whole run: mergekit-evolve's schema plus llm-evo's optional sections."""

    SECTIONS: ClassVar[str] = "genome: and tasks:"

    genome: GenomeConfig
    random_init: bool = False
    search: SearchConfig = Field(default_factory=SearchConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    kinship: KinshipConfig = Field(default_factory=KinshipConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @model_validator(mode="after")
    def _one_start(self) -> RunConfig:
        if self.random_init and self.search.init == "data":
            raise ValueError("random_init and search.init: data both choose the start point")
        if self.search.init == "data" and self.genome.merge_method in ("slerp", "passthrough"):
            raise ValueError(f"search.init: data sets merge weights; "
                             f"{self.genome.merge_method} has none")
        if self.genome.dataflow is not None and self.kinship.active:
            raise ValueError("kinship: a data-flow genome's candidates have no task vectors "
                             "to measure kinship on (turn kinship off)")
        if self.search.objective == "pareto" and len(self.tasks) < 2:
            raise ValueError(f"search.objective: pareto needs at least two tasks (one "
                             f"objective each), and tasks lists {len(self.tasks)}")
        if self.evaluation.screening is not None and not self.search.evaluate_parents:
            raise ValueError("evaluation.screening needs search.evaluate_parents: true (the "
                             "parents, fully scored, are the first models its estimates "
                             "learn from)")
        return self

    def identity(self) -> dict[str, Any]:
        """What defines the search, minus where it runs and where it logs: resuming with
        W&B switched on, or with the LLM server on another port, is the same run."""
        data = super().identity()
        data.pop("wandb")
        data["llm"].pop("base_url")
        return data


def parse_config(data: Any, source: str = "<config>") -> RunConfig:
    """Validate a mapping into a RunConfig, raising ConfigError with a one-line message."""
    return RunConfig.from_data(data, source)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file."""
    return RunConfig.from_file(path)
