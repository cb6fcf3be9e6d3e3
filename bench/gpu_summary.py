"""One run's figures for bench/gpu_check.sh: evaluations, best mean vs parents, time split.

Reads the run ledger through llm-evo's own storage (never the SQLite file by hand) and
prints plain lines, so a GPU lease's log says what happened even if nothing else came back.

Usage: ``python bench/gpu_summary.py RUN_STORAGE``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from real_family import mean, skill_mean  # bench/, the script's own folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(storage: str) -> int:
    from llm_evo.storage.base import open_ledger
    from llm_evo.storage.run import RunStorage

    name = Path(storage).name
    if not RunStorage.exists_in(storage):
        print(f"{name}: no run ledger in {storage}")
        return 1
    with open_ledger(storage, RunStorage) as ledger:
        run = ledger.latest_run()
        rows = ledger.candidates(run["id"])
    ok = [r for r in rows if r.status == "ok" and r.results]
    parents = [r for r in ok if r.kind == "parent"]
    cands = [r for r in ok if r.kind == "candidate"]
    print(f"{name}: {len(rows)} evaluations, {len(rows) - len(ok)} failed, "
          f"status {run['status']}")
    if not cands:
        return 1
    config = json.loads(run["config_json"])
    tasks, n = [t["name"] for t in config["tasks"]], config["limit"]
    best = max(cands, key=lambda r: r.score)
    b, se = skill_mean(best.results, tasks, n)
    top = max(skill_mean(p.results, tasks, n)[0] for p in parents) if parents else float("nan")
    print(f"{name}: best mean {b:.3f} (SE {se:.3f}), best parent {top:.3f}, "
          f"margin {b - top:+.3f} = {(b - top) / se:.1f} SE")
    timed = [r for r in cands if r.t_total]
    merge = mean(r.t_merge or 0.0 for r in timed)
    evaluate = mean(r.t_eval or 0.0 for r in timed)
    total = mean(r.t_total for r in timed)
    print(f"{name}: per candidate {total:.2f} s: merge {merge:.2f}, evaluate {evaluate:.2f}, "
          f"other {total - merge - evaluate:.2f}; non-eval share "
          f"{(total - evaluate) / total:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
