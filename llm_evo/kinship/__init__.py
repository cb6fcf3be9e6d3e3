"""Model kinship (arXiv 2410.12613): how related fine-tunes are, from their weight deltas.

Streams checkpoints one tensor at a time and accumulates float64 Gram statistics of the deltas
d_i = model_i - base, so two models or N models cost one read of each file and a few tensors of
memory. Results are floats in dataclasses.

    from llm_evo.kinship import kinship, kinship_matrix
    r = kinship("ft-a", "ft-b", "base", metrics=("cs", "pcc", "ed"))
    r.metrics["cs"], r.tensors_compared, r.warnings
    m = kinship_matrix(["ft-a", "ft-b", "ft-c"], "base")
    m.cosine(), m.pearson(split=True), m.euclidean(), m.grouped(lambda name: name.split(".")[2])
"""

from llm_evo.kinship.engine import StreamReport, stream_gram
from llm_evo.kinship.matrix import KinshipMatrix, kinship_matrix
from llm_evo.kinship.metrics import METRICS, parse_metrics
from llm_evo.kinship.pair import KinshipResult, kinship
from llm_evo.kinship.reader import CheckpointReader, TensorInfo
from llm_evo.kinship.stats import GramAccumulator, GramStats, group_stats

__all__ = [
    "METRICS",
    "CheckpointReader",
    "GramAccumulator",
    "GramStats",
    "KinshipMatrix",
    "KinshipResult",
    "StreamReport",
    "TensorInfo",
    "group_stats",
    "kinship",
    "kinship_matrix",
    "parse_metrics",
    "stream_gram",
]
