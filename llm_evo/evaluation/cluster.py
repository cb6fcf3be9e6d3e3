"""Which Ray cluster a run uses, and how many workers its nodes can hold.

Why its own module: a Ray user expects `llm-evo run` to behave like `ray.init()`, but
`ray.init()` alone fails in two common cases (a driver that passes `num_cpus` cannot join a
running head; a head that died without `ray stop` leaves a `ray_current_cluster` record
that every later `ray.init()` tries, and fails, to join). The address is chosen in order:

1. `--ray-address` (`local` starts a private cluster, `auto` is Ray's own auto-detection);
2. `RAY_ADDRESS`;
3. the head that `ray start --head` recorded in Ray's temp dir, if its GCS port answers:
   joined through Ray's own auto-detection, which also brings the token a head with
   token authentication expects;
4. otherwise a private local cluster, with one line saying a stale record was ignored.

A joined cluster is never given `num_cpus`/`num_gpus` and never stopped: `ray.shutdown()`
in a driver that joined only disconnects it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from llm_evo.errors import ConfigError, first_line

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class ClusterChoice:
    """Where to run: `address` goes to `ray.init` (None: Ray's auto-detection)."""

    join: bool  # False: start a private local cluster
    address: str | None = None
    source: str = "local"  # what chose it, for messages
    note: str | None = None  # one line for the user (a joined or an ignored cluster)


def address_file() -> str:
    """Where `ray start --head` records its address: Ray's default temp dir (RAY_TMPDIR,
    else TMPDIR on Linux, else /tmp; then `ray/ray_current_cluster`), as `ray.init()` reads it."""
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # Ray before 2.47 kept it here
        try:
            from ray._private.utils import get_ray_address_file
        except ImportError:
            get_ray_address_file = None
    if get_ray_address_file is not None:
        return get_ray_address_file(None)
    base = os.environ.get("RAY_TMPDIR") or (
        os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    return os.path.join(base, "ray", "ray_current_cluster")


def recorded_head() -> str | None:
    """The address in the `ray_current_cluster` record, or None."""
    try:
        with open(address_file()) as f:
            return f.read().strip() or None
    except OSError:
        return None


def gcs_answers(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something listens on the GCS port of `address` (host:port): cheap, and enough
    to tell a live head from the record of a dead one without asking Ray (which retries a
    dead address for tens of seconds)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def choose_cluster(explicit: str | None) -> ClusterChoice:
    """The cluster a run should use (see the module docstring for the order)."""
    if explicit:
        if explicit == "local":
            return ClusterChoice(join=False, source="--ray-address local")
        return ClusterChoice(join=True, address=explicit, source="--ray-address")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        if env == "local":
            return ClusterChoice(join=False, source="RAY_ADDRESS=local")
        return ClusterChoice(join=True, address=env, source="RAY_ADDRESS")
    recorded = recorded_head()
    if recorded is None:
        return ClusterChoice(join=False)
    where = address_file()
    if gcs_answers(recorded):
        return ClusterChoice(
            join=True, address=None, source=f"the head recorded in {where}",
            note=f"Ray: joining the cluster at {recorded} that `ray start` recorded in {where} "
                 "(--ray-address local starts a private one instead)")
    return ClusterChoice(
        join=False, source="local",
        note=f"Ray: {where} records a head at {recorded} that does not answer (stopped "
             "without `ray stop`?); starting a private local cluster instead (delete that "
             "file, or run `ray stop`, to stop seeing this)")


def connect(choice: ClusterChoice, num_cpus: int, init_kwargs: dict[str, Any]) -> ClusterChoice:
    """`ray.init` for `choice`; returns the choice that was used (a recorded head that
    cannot be joined after all falls back to a private cluster)."""
    import ray

    if not choice.join:
        ray.init(address="local", num_cpus=num_cpus, **init_kwargs)
        return choice
    address = choice.address
    explicit = address is not None and address != "auto" and "://" not in address
    if explicit and not gcs_answers(address):
        raise ConfigError(
            f"{_named(choice)}: no Ray cluster answers at {address}; check the address (the "
            "head's GCS port, 6379 by default), or leave it unset to start a local cluster")
    try:
        ray.init(address=address, **init_kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        _disconnect(ray)
        if choice.address is None:  # the recorded head answered the probe, then refused
            fallback = ClusterChoice(
                join=False, note=f"Ray: cannot join the head recorded in {address_file()} "
                                 f"({first_line(exc, 300)}); starting a private local cluster")
            ray.init(address="local", num_cpus=num_cpus, **init_kwargs)
            return fallback
        raise ConfigError(
            f"{_named(choice)}: cannot join the Ray cluster at {address}: {first_line(exc, 300)} "
            "(if it uses token authentication, as `ray start` heads do once a token exists, "
            "set RAY_AUTH_MODE=token, with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
        ) from None
    return choice


def _named(choice: ClusterChoice) -> str:
    return f"RAY_ADDRESS={choice.address}" if choice.source == "RAY_ADDRESS" else (
        f"--ray-address {choice.address}")


def _disconnect(ray: Any) -> None:
    try:
        ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - nothing was connected
        log.debug("ray.shutdown after a failed ray.init: %s", exc)



# ---- what the nodes can hold ---------------------------------------------------------------
def node_gpus() -> list[int]:
    """The GPU count of every live node (logical GPUs: what Ray schedules on)."""
    import ray

    return [int(n.get("Resources", {}).get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]


def gpu_workers(per_node: list[int], per_worker: int, max_gpus: int | None) -> int:
    """How many workers of `per_worker` GPUs fit: each worker's GPUs are on one node, and at
    most `max_gpus` (--num-gpus) GPUs are used in all. 0 when the cluster has no GPU (the
    workers then run on CPUs); a ConfigError when no node is big enough for one worker,
    since Ray would wait forever for such an actor."""
    usable = sum(per_node) if max_gpus is None else min(sum(per_node), max_gpus)
    if usable == 0:
        return 0
    biggest = max(per_node)
    if per_worker > biggest:
        raise ConfigError(
            f"evaluation.gpus_per_worker is {per_worker}, but no Ray node has more than "
            f"{biggest} GPU(s) (GPUs per node: {', '.join(map(str, per_node))}); a worker's "
            "GPUs must be on one node: lower it, or add a node with enough GPUs")
    if per_worker > usable:
        raise ConfigError(
            f"evaluation.gpus_per_worker is {per_worker}, but --num-gpus allows only "
            f"{usable} GPU(s)")
    return min(sum(g // per_worker for g in per_node), usable // per_worker)
