"""llm-evo: evolutionary merge search for large language models, on mergekit, lm-eval and Ray."""

__version__ = "0.1.0"
