"""The end-of-run summary printed by `llm-evo run`: best merge vs. every parent."""

from __future__ import annotations

from llm_evo.config import RunConfig


def _row(name: str, results: dict[str, float] | None, score: float | None,
         keys: list[str]) -> str:
    cells = [f"{(results or {}).get(k, float('nan')):>10.4f}" for k in keys]
    mean = sum((results or {}).get(k, 0.0) for k in keys) / max(len(keys), 1)
    score_cell = f"{score:>9.4f}" if score is not None else f"{'failed':>9}"
    return f"{name:<28}{''.join(cells)}{mean:>10.4f}{score_cell}"


def kinship_lines(kin: dict | None) -> list[str]:
    """The kinship cost: per candidate, against the candidates' mean evaluation time."""
    if not kin:
        return []
    per = kin.get("per_candidate_s")
    cost = f"{per * 1e6:.0f} us per candidate" if per is not None else "no candidate scored"
    if kin.get("fraction") is not None:
        cost += (f" = {100 * kin['fraction']:.3f}% of its evaluation time "
                 f"({kin['eval_s']:.2f}s)")
    how = "exact" if kin.get("exact") else f"sketch of {kin.get('sketch_size')} coordinates"
    seconds = f"in {kin.get('seconds') or 0:.1f}s"
    if kin.get("cached"):
        source = f"statistics loaded from the run's cache {seconds}"
    else:
        source = (f"statistics from one read of {kin.get('checkpoints_read')} checkpoints, "
                  f"{(kin.get('bytes_read') or 0) / 1e6:.1f} of "
                  f"{(kin.get('file_bytes') or 0) / 1e6:.1f} MB, {seconds} (the pass itself "
                  f"{kin.get('pass_seconds') or 0:.1f}s)")
    return [f"kinship ({kin.get('metric')}, {how}): {cost}; {source}"]


def summary_text(summary, config: RunConfig) -> str:
    keys = [f"{t.name}/{t.metric}" for t in config.tasks]
    header = f"{'model':<28}" + "".join(f"{k.split('/')[0][:10]:>10}" for k in keys)
    header += f"{'mean':>10}{'score':>9}"
    lines = [
        f"run {summary.run_id}: {summary.evaluations} candidates evaluated "
        f"({summary.failed} failed) in {summary.elapsed:.0f}s",
        *kinship_lines(getattr(summary, "kinship", None)),
        "",
        header,
    ]
    for p in summary.parents:
        lines.append(_row(f"parent {p.label}", p.results, p.score if p.status == "ok" else None,
                          keys))
    best = summary.best
    if best is None:
        lines.append("no candidate finished successfully")
        return "\n".join(lines)
    lines.append(_row(f"best merge (gen {best.generation + 1})", best.results, best.raw_score,
                      keys))
    parent_means = [
        sum((p.results or {}).get(k, 0.0) for k in keys) / len(keys)
        for p in summary.parents if p.status == "ok"
    ]
    best_mean = sum((best.results or {}).get(k, 0.0) for k in keys) / len(keys)
    if parent_means:
        verdict = "beats" if best_mean > max(parent_means) else "does not beat"
        lines.append(f"\nbest merge mean {best_mean:.4f} {verdict} the best parent mean "
                     f"{max(parent_means):.4f}")
    lines += ["", f"best merge config ({summary.best_config_path}):", best.merge_config or ""]
    if summary.final_model_path:
        lines.append(f"final model: {summary.final_model_path}")
    return "\n".join(lines)
