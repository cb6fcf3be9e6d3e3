"""`llm-evo pool`: top-k greedy merging with model kinship (arXiv 2410.12613, Algorithm 1).

Start from n fine-tunes of one base, merge every pair, keep the top-k by score, and keep
merging the top-k (plus, by default, one exploration merge of the best with its least
related model) until the top-k stops changing. The pieces are kept apart so the algorithm
can be tested without Ray or lm-eval:

- the frozen pool config (`pool:` plus the run config's `tasks:` and lm-eval keys) is
  `llm_evo.config.pool`
- `algorithm`: pure planning: which pairs to merge, the exploration partner, top-k, stopping
- `merging`: the mergekit config of one pairwise merge, and running it
- the ledger of models, merges, kinship and rounds is `llm_evo.storage.pool`
- the loop (Ray workers, kinship, merges on disk, deleting what leaves the top-k) is
  `llm_evo.session.pool_loop`
- the family tree PNG and summary.md drawn from the ledger are `llm_evo.report.pool`
"""
