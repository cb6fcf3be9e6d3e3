"""The ledgers under a storage path: SQLite files that everything a run learns is written
to first, and that progress, reports, W&B and resume read back.

- `base`: the connection, transactions and runs table every ledger shares, and
  `open_ledger(path)`, the one place that knows which file holds which kind of ledger
- `run`: `RunStorage` (`llm_evo.sqlite`), written by `llm-evo run`: runs, candidates,
  strategy events and checkpoints
- `pool`: `PoolLedger` (`llm_evo_pool.sqlite`), written by `llm-evo pool`: the lineage of
  models, merges, kinship and rounds
"""

from llm_evo.storage.base import Ledger, held_ledgers, open_ledger, transaction
from llm_evo.storage.pool import ModelRecord, PoolLedger, RoundRecord, is_pool_storage
from llm_evo.storage.run import CandidateRecord, RunStorage

__all__ = ["CandidateRecord", "Ledger", "ModelRecord", "PoolLedger", "RoundRecord",
           "RunStorage", "held_ledgers", "is_pool_storage", "open_ledger", "transaction"]
