"""What every session shares, `llm-evo run` and `llm-evo pool` alike: opening or resuming the
run its ledger holds, the workers' spec and life cycle, and the versions a run records.

Why here, once: both commands guard a storage path the same way, start the same Ray workers
and must end every run with a status a later resume can trust (finished, interrupted or
failed), whatever stopped it. The differences between the two are parameters
(`ResumePolicy`), not copies.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_evo import __version__
from llm_evo.config import format_diff, resume_diff
from llm_evo.errors import ConfigError, WorkersLostError
from llm_evo.session.options import PoolOptions, RunOptions, SessionOptions

if TYPE_CHECKING:
    from llm_evo.config import ScoringConfig
    from llm_evo.evaluation.jobs import WorkerSpec
    from llm_evo.evaluation.workers import WorkerSet
    from llm_evo.storage.base import Ledger

Echo = Callable[[str], None]


def no_echo(_message: str) -> None:
    """The default echo: a library says nothing on the terminal; the CLI passes its own."""


def library_versions() -> dict[str, str]:
    """The versions a run records beside its config, so a result can be traced to its code."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"llm-evo": __version__, "python": platform.python_version()}
    for pkg in ("mergekit", "lm-eval", "ray", "torch", "transformers", "cma", "openai"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# ---- open or resume ------------------------------------------------------------------------
@dataclass(frozen=True)
class ResumePolicy:
    """How a session treats the run its ledger already holds (the latest one).

    The messages are templates over {root}, {id}, {status} and {diff} so each command keeps
    its own wording.
    """

    force_new: bool  # --force-new-run: always a new run beside the old ones
    must_resume: bool  # run --resume: no run to continue is an error, not a fresh start
    resume_finished: bool  # False: a finished run is an error (`finished`), not continued
    different_config: str  # the error when the stored run is of another config
    finished: str = ""  # the error for a finished run when resume_finished is False


def run_policy(options: RunOptions) -> ResumePolicy:
    """`llm-evo run`: continue the latest run of the same config, finished or not (a larger
    budget adds generations); `--resume` insists that there is one."""
    return ResumePolicy(
        force_new=options.force_new_run, must_resume=options.resume, resume_finished=True,
        different_config="{root} holds run {id} of a different config ({diff}); "
                         "pass --force-new-run to start a new run there")


def pool_policy(options: PoolOptions) -> ResumePolicy:
    """`llm-evo pool`: continue an unfinished pool run only; a finished one is final
    (replaying its deterministic loop would change nothing)."""
    return ResumePolicy(
        force_new=options.force_new_run, must_resume=False, resume_finished=False,
        different_config="{root} already holds pool run {id} ({status}) of a different "
                         "config ({diff}); resume it with the same config and flags, or pass "
                         "--force-new-run",
        finished="{root} already holds pool run {id} (finished); use a new --storage-path "
                 "or pass --force-new-run")


def open_or_resume(ledger: Ledger, config: Any, policy: ResumePolicy, root: Path,
                   create: Callable[[], int]) -> tuple[int, dict[str, Any] | None]:
    """The run to continue, or a new one from `create()`: (run id, the resumed run's row or
    None for a new run). A stored config that differs only by fields added since (another
    hash, same values) still resumes: it is read with today's schema."""
    latest = ledger.run()
    if latest is None or policy.force_new:
        if policy.must_resume:
            raise ConfigError(f"{root}: no run to resume")
        return create(), None
    fields = {"root": root, "id": latest["id"], "status": latest["status"]}
    if latest["status"] == "finished" and not policy.resume_finished:
        raise ConfigError(policy.finished.format(**fields))
    diff = (resume_diff(latest["config_json"], config)
            if latest["config_hash"] != config.config_hash() else [])
    if diff:
        raise ConfigError(policy.different_config.format(**fields, diff=format_diff(diff)))
    return latest["id"], latest


# ---- workers -------------------------------------------------------------------------------
def build_worker_spec(config: ScoringConfig, options: SessionOptions, root: Path, seed: int,
                      **own: Any) -> WorkerSpec:
    """The workers' spec of a run or pool config: task paths resolved against the config's
    folder, merges under STORAGE/merges; `own` adds the command's own fields."""
    from llm_evo.evaluation.spec import worker_spec
    from llm_evo.resolve import task_search_paths

    config_dir = Path(options.config_dir) if options.config_dir else None
    return worker_spec(
        config,
        task_search_paths=task_search_paths(config, options.task_search_paths, config_dir),
        merge_dir=str((root / "merges").resolve()),
        seed=seed,
        trust_remote_code=options.trust_remote_code,
        allow_crimes=options.allow_crimes,
        **own,
    )


@contextmanager
def running_workers(spec: WorkerSpec, options: SessionOptions, *,
                    record_status: Callable[[str], None], echo: Echo = no_echo,
                    describe: Callable[[list[dict]], str] = lambda infos: "",
                    scheduling: str = "pool",
                    after: Callable[[str], None] | None = None) -> Iterator[WorkerSet]:
    """Started workers for the body; at the end, whatever ended it, `record_status` writes
    how the run ended (finished; interrupted by Ctrl-C or lost workers, so resumable; else
    failed) before the workers shut down, and `after(status)` runs last.

    Once started, one line says what runs where: "workers: N on DEVICES" + `describe(infos)`.
    """
    from llm_evo.evaluation.workers import WorkerOptions, WorkerSet

    workers = WorkerSet(spec, WorkerOptions(
        ray_address=options.ray_address, num_workers=options.num_workers,
        num_gpus=options.num_gpus, strategy=scheduling, echo=echo))
    status = "failed"
    try:
        workers.start()
        infos = workers.worker_info
        echo(f"workers: {len(infos)} on {', '.join(sorted({i['device'] for i in infos}))}"
             + describe(infos))
        yield workers
        status = "finished"
    except (KeyboardInterrupt, WorkersLostError):  # resumable: what finished is recorded
        status = "interrupted"
        raise
    finally:
        record_status(status)
        workers.shutdown()
        if after is not None:
            after(status)
