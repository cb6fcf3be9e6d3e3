"""`llm-evo mix`: a weighted average of models, with weights given or learned from data.

Light to import: torch, transformers and mergekit load only inside the functions that
score or merge, so the CLI's --help and the config schema stay fast.
"""

from llm_evo.mix.data import ExampleData, PairExample, TripleExample, load_examples
from llm_evo.mix.merge import MixResult, check_models, merge_config_dict, mix_models
from llm_evo.mix.weights import MixWeights, data_weights, parse_weights, softmax_weights

__all__ = [
    "ExampleData", "MixResult", "MixWeights", "PairExample", "TripleExample",
    "check_models", "data_weights", "load_examples", "merge_config_dict", "mix_models",
    "parse_weights", "softmax_weights",
]
