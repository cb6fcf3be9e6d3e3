"""One streaming pass over a base and k models: each tensor of each checkpoint is read once.

For every tensor of the base (in storage order) the same tensor is read from each model, the
deltas are folded into float64 Gram statistics chunk by chunk, and everything is dropped before
the next tensor. Tensors that cannot be compared are skipped and reported, never fatal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field

from llm_evo.kinship.reader import CheckpointReader, TensorInfo
from llm_evo.kinship.stats import GramAccumulator


@dataclass(frozen=True)
class StreamReport:
    """What one pass compared and what it skipped (with names), plus warnings."""

    tensors_compared: int
    elements_compared: int
    bytes_read: int  # tensor bytes read from all checkpoints together
    missing: tuple[str, ...] = ()  # in the base, absent from at least one model
    extra: tuple[str, ...] = ()  # in a model, absent from the base
    mismatched: tuple[str, ...] = ()  # shapes differ beyond the first (vocab) dimension
    truncated: tuple[str, ...] = ()  # vocab-size mismatch: compared on the common rows
    tied: tuple[str, ...] = ()  # aliases of another tensor (tied embeddings): counted once
    non_float: tuple[str, ...] = ()  # integer or bool buffers
    warnings: tuple[str, ...] = ()
    elapsed_s: float = 0.0
    kernel: str = ""  # what folded the bytes: "c" or "numpy" (fast.py), or "torch" (stats.py)

    @property
    def tensors_skipped(self) -> int:
        """Tensors of the base that were not compared (extra tensors are counted apart)."""
        return len(self.missing) + len(self.mismatched) + len(self.tied) + len(self.non_float)

    def to_dict(self) -> dict:
        out = asdict(self)
        lists = ("missing", "extra", "mismatched", "truncated", "tied", "non_float")
        for key in (*lists, "warnings"):
            out[key] = list(out[key])
        out["tensors_skipped"] = self.tensors_skipped
        out["counts"] = {key: len(out[key]) for key in lists}
        return out


@dataclass
class _Plan:
    """The tensors to compare (name, rows to keep or None) and the skip lists."""

    items: list[tuple[str, int | None]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    non_float: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _plan(base: CheckpointReader, models: Sequence[CheckpointReader]) -> _Plan:
    plan = _Plan()
    for name in base.names():
        info = base.info(name)
        if name in base.tied:
            plan.tied.append(name)
            continue
        if not info.is_float:
            plan.non_float.append(name)
            continue
        if any(name not in m for m in models):
            plan.missing.append(name)
            continue
        infos = [info, *(m.info(name) for m in models)]
        if any(not i.is_float for i in infos):
            plan.non_float.append(name)
            continue
        rows = _common_rows(infos)
        if rows == -1:
            plan.mismatched.append(name)
            continue
        if rows is not None:
            plan.truncated.append(name)
        plan.items.append((name, rows))
    base_names = set(base.names())
    for m in models:
        for name in m.names():
            if name not in base_names and name not in m.tied and name not in plan.extra:
                plan.extra.append(name)
    _explain(plan, base, models)
    return plan


def _common_rows(infos: Sequence[TensorInfo]) -> int | None:
    """None if all shapes match; the common first dimension if only it differs; else -1."""
    shapes = {i.shape for i in infos}
    if len(shapes) == 1:
        return None
    if len({len(s) for s in shapes}) == 1 and len({s[1:] for s in shapes}) == 1 and infos[0].shape:
        return min(s[0] for s in shapes)
    return -1


def _short(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _explain(plan: _Plan, base: CheckpointReader, models: Sequence[CheckpointReader]) -> None:
    w = plan.warnings
    if not plan.items:
        w.append("no tensor could be compared: every metric is NaN")
    if plan.truncated:
        name = plan.truncated[0]
        sizes = ", ".join(f"{r.spec}: {r.info(name).shape[0]}" for r in (base, *models))
        w.append(
            f"vocab size differs ({sizes}); compared {len(plan.truncated)} tensor(s) on the"
            f" common rows: {_short(plan.truncated)}"
        )
    if plan.missing:
        w.append(
            f"skipped {len(plan.missing)} tensor(s) missing from a model: {_short(plan.missing)}"
        )
    if plan.extra:
        w.append(f"skipped {len(plan.extra)} tensor(s) not in the base: {_short(plan.extra)}")
    if plan.mismatched:
        w.append(
            f"skipped {len(plan.mismatched)} tensor(s) of different shape:"
            f" {_short(plan.mismatched)}"
        )
    if plan.tied:
        pairs = [f"{n} = {base.tied[n]}" for n in plan.tied]
        w.append(f"tied embeddings counted once: {_short(pairs)}")
    if plan.non_float:
        w.append(f"skipped {len(plan.non_float)} non-float tensor(s): {_short(plan.non_float)}")


def _fast_items(plan: _Plan, base: CheckpointReader, models: Sequence[CheckpointReader]
                ) -> tuple[list[tuple[str, int]], list[list[TensorInfo]]] | None:
    """(name, elements to compare) and the tensors' infos (base first) for the torch-free
    pass, or None where it cannot read them."""
    from llm_evo.kinship.fast import supports

    items, infos = [], []
    for name, rows in plan.items:
        row = [r.info(name) for r in (base, *models)]
        if not supports(row):
            return None
        shape = row[0].shape
        n = row[0].numel if rows is None else rows * (row[0].numel // shape[0])
        items.append((name, n))
        infos.append(row)
    return items, infos


def _fast_pass(items: list[tuple[str, int]], infos: list[list[TensorInfo]], k: int,
               acc: GramAccumulator, labels: list[str],
               progress: Callable[[int, int, str], None] | None) -> tuple[int, int, str]:
    """The torch-free pass (fast.py) into `acc`; returns (elements compared, bytes read,
    kernel)."""
    from llm_evo.kinship.fast import gram_pass

    done = iter(range(len(items)))

    def record(name: str, stats) -> None:  # noqa: ANN001 - GramStats
        if progress is not None:
            progress(next(done), len(items), name)
        acc.record(name, stats)

    kind = gram_pass(items, infos, k, labels=labels, workers=acc.workers, on_tensor=record)
    elements = sum(n for _, n in items)
    read = sum(n * i.element_size for (_, n), row in zip(items, infos, strict=True) for i in row)
    return elements, read, kind


def stream_gram(
    models: Sequence[str | os.PathLike[str]],
    base: str | os.PathLike[str],
    *,
    key: Callable[[str], Hashable | None] | None = None,
    low_precision: bool = False,
    device: str = "cpu",
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[GramAccumulator, StreamReport]:
    """Read each tensor of base and models once; return per-tensor (and per-bucket) statistics.

    `key(name)` buckets tensors (see GramAccumulator); `progress(i, total, name)` is called
    before each tensor.
    """
    start = time.perf_counter()
    base_reader = CheckpointReader(base)
    readers = [CheckpointReader(m) for m in models]
    plan = _plan(base_reader, readers)
    labels = [base_reader.spec, *(r.spec for r in readers)]
    elements = 0
    bytes_read = 0
    acc = GramAccumulator(
        len(readers),
        key,
        low_precision=low_precision,
        device=device,
        workers=workers,
        labels=labels,
    )
    fast = _fast_items(plan, base_reader, readers) if (
        acc.device == "cpu" and not low_precision) else None
    if fast is not None:
        elements, bytes_read, kind = _fast_pass(*fast, len(readers), acc, labels, progress)
    else:
        kind = "torch"
        with acc:
            for i, (name, rows) in enumerate(plan.items):
                if progress is not None:
                    progress(i, len(plan.items), name)
                tensors = [base_reader.read(name), *(r.read(name) for r in readers)]
                bytes_read += sum(t.numel() * t.element_size() for t in tensors)
                if rows is not None:
                    tensors = [t[:rows] for t in tensors]
                stats = acc.add(name, tensors[0], tensors[1:])
                elements += stats.count
                del tensors  # releases the mappings before the next tensor is read
    for r in (base_reader, *readers):
        r.close()
    report = StreamReport(
        tensors_compared=len(plan.items),
        elements_compared=elements,
        bytes_read=bytes_read,
        missing=tuple(plan.missing),
        extra=tuple(plan.extra),
        mismatched=tuple(plan.mismatched),
        truncated=tuple(plan.truncated),
        tied=tuple(plan.tied),
        non_float=tuple(plan.non_float),
        warnings=tuple(plan.warnings),
        elapsed_s=time.perf_counter() - start,
        kernel=kind,
    )
    return acc, report
