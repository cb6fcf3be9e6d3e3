"""What a run shows: everything here reads the ledger or is handed plain values, and writes
files or strings, never the terminal (only `cli/` does).

`run.py` (a stored run and its summary.md), `pool.py` (a pool run's family-tree report),
`plots.py` (the run's figures and the figure helpers both reports share), `summary.py` (the
end-of-run text `llm-evo run` prints), `progress.py` (the per-generation progress line, drawn
on a stream the CLI hands over), `tracking.py` (W&B, read from storage). Empty on purpose:
importing the package pulls in none of matplotlib, networkx or wandb.
"""
