"""`python -m llm_evo` is `llm-evo`."""

from llm_evo.cli import main

main()
