"""Per-item agreement between the best merge and each parent: which items it gained and lost.

Every evaluation of a run scores the same items (the seeded `shuffle` + `limit` subset, or
lm-eval's first `limit`), so the best merge and a parent can be compared item by item. Two
merges with the same accuracy can differ on many items; a merge that gains items of one
parent's skill while losing none of another's is what merging promises, and this table is
where a user sees whether it happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_evo.storage import CandidateRecord

SHOW_IDS = 12  # doc ids listed per gained/lost cell


@dataclass(frozen=True)
class Agreement:
    """One task, the best merge against one parent, over the items both were scored on."""

    task: str
    parent: str
    items: int
    gained: list[int]  # doc ids the merge scores higher on than the parent
    lost: list[int]  # doc ids it scores lower on
    both_right: int  # items both score fully (value 1)


def agreements(best_items: dict[str, dict[str, list]],
               parents: list[tuple[str, dict[str, dict[str, list]]]]) -> list[Agreement]:
    """The best merge's items against each (parent label, parent items), task by task."""
    out = []
    for task, mine in best_items.items():
        merged = dict(zip(mine["ids"], mine["values"], strict=True))
        for label, items in parents:
            theirs = items.get(task)
            if theirs is None:
                continue
            other = dict(zip(theirs["ids"], theirs["values"], strict=True))
            common = sorted(merged.keys() & other.keys())
            out.append(Agreement(
                task, label, len(common),
                gained=[i for i in common if merged[i] > other[i]],
                lost=[i for i in common if merged[i] < other[i]],
                both_right=sum(merged[i] == other[i] == 1.0 for i in common)))
    return out


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:SHOW_IDS])
    return shown + (f", ... (+{len(ids) - SHOW_IDS})" if len(ids) > SHOW_IDS else "")


def agreement_markdown(best: CandidateRecord, parents: list[CandidateRecord],
                       items: dict[tuple[int, int], dict[str, dict[str, list]]]) -> list[str]:
    """The report's "Item by item" section (empty when the ledger has no per-item results:
    a run from before they were kept)."""
    mine = items.get((best.generation, best.idx))
    rows = agreements(mine or {}, [(p.label or str(p.idx), items[(p.generation, p.idx)])
                                   for p in parents if (p.generation, p.idx) in items])
    if not rows:
        return []
    lines = ["## Item by item: the best merge against each parent", "",
             "Items of the same subset, by lm-eval doc id: *gained* the merge scores higher "
             "than the parent, *lost* lower.", "",
             "| task | parent | items | both right | gained | lost | gained ids | lost ids |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for a in rows:
        lines.append(f"| {a.task} | {a.parent} | {a.items} | {a.both_right} | "
                     f"{len(a.gained)} | {len(a.lost)} | {_ids(a.gained)} | {_ids(a.lost)} |")
    return [*lines, ""]
