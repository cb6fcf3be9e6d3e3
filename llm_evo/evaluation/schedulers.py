"""How a batch of jobs is spread over the evaluation actors: pool, buffered or serial.

All three hand each result to `on_result` the moment it arrives, and none leaves a
worker idle while a job of the batch has not been started:

- `pool`: each job goes to the next idle EvalWorker, which merges then scores it.
- `buffered`: like pool, but a worker is also given its *next* job, which it merges in a
  background thread while scoring the current one, so it never waits for a merge. A
  next job is reserved only when the queue holds more jobs than there are idle workers,
  and a worker that runs out of work takes over another's reserved (not yet started) job.
- `serial`: per worker, a MergeWorker and an EvalWorker share a STRICT_PACK placement
  group, so a candidate is merged and scored on the same node (merges can stay on local
  disk); a pair merges its next job while scoring the current one, on the same rules.

A job whose worker died is tried once more: on the same worker when Ray restarted it, on
another when Ray could not (a result that says "worker died" is the cluster's failure, not
the candidate's). When no worker is left, WorkersLostError is raised and the jobs not finished are
not reported, so a resumed run does them rather than recording them as failed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llm_evo.errors import WorkersLostError, first_line
from llm_evo.evaluation.jobs import Job, JobResult

log = logging.getLogger(__name__)

OnResult = Callable[[JobResult], None]
IsAlive = Callable[[Any], bool]

LOST = ("every Ray evaluation worker has died (was the Ray cluster stopped, or its raylet "
        "killed?); finished evaluations are recorded: run the same command again to resume")


def _failed(job: Job, error: str) -> JobResult:
    return JobResult(job.generation, job.idx, "failed", error=error)



def _collect(ref: Any, job: Job) -> tuple[JobResult, bool]:
    """The job's result, and whether the actor that ran it died."""
    import ray

    try:
        return ray.get(ref), False
    except ray.exceptions.RayActorError as exc:
        return _failed(job, f"worker died: {first_line(exc)}"), True
    except Exception as exc:  # noqa: BLE001 - e.g. a task-level system error
        return _failed(job, f"{type(exc).__name__}: {first_line(exc)}"), False


@dataclass
class _Lost:
    """Jobs whose worker died for good: each is retried once on another worker; one lost
    twice is reported as failed when the batch is done (never if no worker is left)."""

    retried: set[tuple[int, int]] = field(default_factory=set)
    failed: list[JobResult] = field(default_factory=list)

    def retry(self, job: Job, result: JobResult, others: bool) -> bool:
        """Whether to queue `job` again (`others`: some other worker is still alive)."""
        key = (job.generation, job.idx)
        if key in self.retried or not others:
            self.failed.append(result)
            return False
        self.retried.add(key)
        log.info("a worker was lost during job %d of generation %d; trying it on another",
                 job.idx, job.generation)
        return True

    def requeue(self, job: Job, result: JobResult, queue: deque, others: bool) -> None:
        """Put `job` back at the front of `queue` if `retry` allows it. A worker that Ray
        restarted counts as another worker: its job was cut short, not failed by itself."""
        if self.retry(job, result, others):
            queue.appendleft(job)

    def report(self, on_result: OnResult) -> None:
        for result in self.failed:
            on_result(result)


def run_next_idle(actors: list, jobs: Iterable[Job], on_result: OnResult,
                  alive: IsAlive) -> None:
    """`--strategy pool` (mergekit-evolve's name, after Ray's ActorPool): each job goes to
    the next idle worker."""
    import ray

    queue = deque(jobs)
    in_flight: dict = {}  # ObjectRef -> (actor, job)
    idle = list(actors)
    lost = _Lost()
    while queue or in_flight:
        while queue and idle:
            actor, job = idle.pop(0), queue.popleft()
            in_flight[actor.evaluate.remote(job)] = (actor, job)
        if not in_flight:
            raise WorkersLostError(LOST)
        done, _ = ray.wait(list(in_flight), num_returns=1)
        actor, job = in_flight.pop(done[0])
        result, died = _collect(done[0], job)
        if not died:
            idle.append(actor)
            on_result(result)
        elif alive(actor):  # restarted by Ray
            idle.append(actor)
            lost.requeue(job, result, queue, True)
        else:
            lost.requeue(job, result, queue, bool(idle or in_flight))
    lost.report(on_result)


def run_buffered(actors: list, jobs: Iterable[Job], on_result: OnResult,
                 alive: IsAlive) -> None:
    import ray

    queue = deque(jobs)
    live = list(range(len(actors)))
    busy: set[int] = set()
    reserved: dict[int, Job] = {}  # worker -> the job it is merging in the background
    in_flight: dict = {}  # ObjectRef -> (worker, job)
    lost = _Lost()
    while queue or in_flight or reserved:
        waiting = [i for i in live if i not in busy]
        while waiting:
            i = waiting.pop(0)
            job = reserved.pop(i, None)
            if job is None and queue:
                job = queue.popleft()
            if job is None:
                victim = next((k for k in reserved if k in busy), None)
                if victim is None:
                    continue  # nothing left to start: this worker stays idle
                job = reserved.pop(victim)
                actors[victim].drop_prefetch.remote()
            nxt = queue.popleft() if len(queue) > len(waiting) else None
            if nxt is not None:
                reserved[i] = nxt
            in_flight[actors[i].evaluate.remote(job, nxt)] = (i, job)
            busy.add(i)
        if not in_flight:
            raise WorkersLostError(LOST)
        done, _ = ray.wait(list(in_flight), num_returns=1)
        i, job = in_flight.pop(done[0])
        busy.discard(i)
        result, died = _collect(done[0], job)
        if died and not alive(actors[i]):
            live.remove(i)
            orphan = reserved.pop(i, None)
            if orphan is not None:
                queue.appendleft(orphan)
            lost.requeue(job, result, queue, bool(live))
            continue
        if died:  # restarted by Ray
            lost.requeue(job, result, queue, True)
            continue
        on_result(result)
    lost.report(on_result)


@dataclass
class _Ticket:
    job: Job
    merge_ref: Any
    eval_ref: Any


@dataclass
class _Slot:
    merger: Any
    evaluator: Any
    tickets: list[_Ticket] = field(default_factory=list)  # oldest first; at most 2


def run_serial(pairs: list[tuple[Any, Any]], jobs: Iterable[Job], on_result: OnResult,
               alive: IsAlive) -> None:
    import ray

    queue = deque(jobs)
    slots = [_Slot(m, e) for m, e in pairs]
    live = list(range(len(slots)))
    owner: dict = {}  # eval ObjectRef -> slot index
    reported: set[tuple[int, int]] = set()
    lost = _Lost()

    def submit(s: int, job: Job) -> None:
        slot = slots[s]
        merge_ref = slot.merger.merge.remote(job)
        eval_ref = slot.evaluator.evaluate_merged.remote(job, merge_ref)
        slot.tickets.append(_Ticket(job, merge_ref, eval_ref))
        owner[eval_ref] = s

    while queue or owner:
        empty = [s for s in live if not slots[s].tickets]
        for s in empty:
            if queue:
                submit(s, queue.popleft())
        empty = [s for s in live if not slots[s].tickets]
        for s in live:
            if len(slots[s].tickets) == 1 and len(queue) > len(empty):
                submit(s, queue.popleft())
        for s in empty:  # take over a job that is only merged, not yet being scored
            victim = next((v for v in live if len(slots[v].tickets) == 2), None)
            if victim is None:
                break
            ticket = slots[victim].tickets.pop()
            owner.pop(ticket.eval_ref, None)
            _abandon(slots[victim], ticket)
            submit(s, ticket.job)
        if not owner:
            if queue:
                raise WorkersLostError(LOST)
            break
        done, _ = ray.wait(list(owner), num_returns=1)
        ref = done[0]
        s = owner.pop(ref)
        slot = slots[s]
        ticket = next(t for t in slot.tickets if t.eval_ref is ref)
        slot.tickets.remove(ticket)
        result, died = _collect(ref, ticket.job)
        key = (ticket.job.generation, ticket.job.idx)
        if died and not (alive(slot.evaluator) and alive(slot.merger)):
            live.remove(s)
            for t in slot.tickets:
                owner.pop(t.eval_ref, None)
                queue.appendleft(t.job)
            slot.tickets.clear()
            lost.requeue(ticket.job, result, queue, bool(live))
            continue
        if died:  # restarted by Ray
            lost.requeue(ticket.job, result, queue, True)
            continue
        if key not in reported:
            reported.add(key)
            on_result(result)
    lost.report(on_result)


def _abandon(slot: _Slot, ticket: _Ticket) -> None:
    """Cancel a queued evaluation and delete what its merge produced (best effort)."""
    import ray

    try:
        ray.cancel(ticket.eval_ref)
    except Exception as exc:  # noqa: BLE001 - it may already run; its result is ignored
        log.debug("could not cancel a queued evaluation: %s", exc)
    slot.evaluator.discard.remote(ticket.merge_ref)
