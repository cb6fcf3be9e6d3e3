"""A session: one `llm-evo run` or `llm-evo pool` from its storage path to its summary.

- `options`: the run-time flags (SessionOptions, and each command's own)
- `session`: what both share: open-or-resume against the ledger (`ResumePolicy`), the
  workers' spec and life cycle (the final status always recorded), library versions
- `search_loop`: `llm-evo run`'s generation loop, its parents and the final merge
- `hooks`: what acts on each candidate of a search (kinship penalty, data-driven start)
- `pool_loop`, `pool_kinship`: `llm-evo pool`'s greedy loop over the model pool

Nothing here writes to the terminal: every message goes through the `echo` the CLI passes.
"""
