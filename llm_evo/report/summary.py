"""The end-of-run summary printed by `llm-evo run`: best merge vs. every parent."""

from __future__ import annotations

from llm_evo.config import RunConfig


def column_labels(keys: list[str]) -> list[str]:
    """One header per `task/metric` key: the task name, plus the metric where one task is
    listed with two metrics."""
    tasks = [k.split("/")[0] for k in keys]
    return [k.replace(",none", "") if tasks.count(t) > 1 else t
            for k, t in zip(keys, tasks, strict=True)]


def _row(name: str, results: dict[str, float] | None, score: float | None,
         keys: list[str], widths: list[int]) -> str:
    cells = [f"  {(results or {}).get(k, float('nan')):>{w}.4f}"
             for k, w in zip(keys, widths, strict=True)]
    score_cell = f"{score:>9.4f}" if score is not None else f"{'failed':>9}"
    return f"{name:<28}{''.join(cells)}{score_cell}"


def score_scale(config: RunConfig) -> str:
    """The one sentence that names the score's scale, printed once per summary.

    The score is mergekit-evolve's fitness, Σ weight × metric over the tasks: the progress
    bar, this summary, the report and W&B all show that same number.
    """
    weights = [t.weight for t in config.tasks]
    top = sum(w for w in weights if w > 0)
    return (f"score = sum of weight x metric over {len(weights)} task(s), as mergekit-evolve "
            f"scores (the best possible is {top:g} when every metric is at 1)")


def llm_usage_line(usage: tuple[int, int] | None) -> str | None:
    """How many generations the LLM strategy's own proposal drove (None: not an LLM run)."""
    if usage is None:
        return None
    used, asked = usage
    if asked == 0:
        return "LLM proposals used: none asked yet (generation 1 starts from the initial genome)"
    line = f"LLM proposals used: {used} of {asked} generations"
    if used < asked:
        line += (f" ({asked - used} fell back to the best genome so far: the LLM gave no "
                 "usable answer; see run.log)")
    return line


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
    labels = column_labels(keys)
    widths = [max(len(label), 6) for label in labels]
    header = f"{'model':<28}" + "".join(f"  {label:>{w}}" for label, w in
                                        zip(labels, widths, strict=True))
    header += f"{'score':>9}"
    lines = [
        f"run {summary.run_id}: {summary.evaluations} candidates evaluated "
        f"({summary.failed} failed) in {summary.elapsed:.0f}s",
        *kinship_lines(getattr(summary, "kinship", None)),
    ]
    pareto = getattr(summary, "pareto", None)
    if pareto:
        lines.append(f"Pareto front: {pareto['size']} merge(s) over "
                     f"{len(pareto['objectives'])} tasks, one config each in {pareto['folder']}")
    usage = llm_usage_line(getattr(summary, "llm_usage", None))
    if usage:
        lines.append(usage)
    lines += ["", score_scale(config), header]
    for p in summary.parents:
        lines.append(_row(f"parent {p.label}", p.results, p.score if p.status == "ok" else None,
                          keys, widths))
    best = summary.best
    if best is None:
        lines.append("no candidate finished successfully")
        return "\n".join(lines)
    lines.append(_row(f"best merge (gen {best.generation + 1})", best.results, best.raw_score,
                      keys, widths))
    parent_scores = [p.raw_score for p in summary.parents
                     if p.status == "ok" and p.raw_score is not None]
    if parent_scores and best.raw_score is not None:
        verdict = "beats" if best.raw_score > max(parent_scores) else "does not beat"
        lines.append(f"\nbest merge score {best.raw_score:.4f} {verdict} the best parent score "
                     f"{max(parent_scores):.4f}")
    lines += ["", f"best merge config ({summary.best_config_path}):", best.merge_config or ""]
    if summary.final_model_path:
        lines.append(f"final model: {summary.final_model_path}")
    return "\n".join(lines)
