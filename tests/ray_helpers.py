"""Ray heads and runs for tests that stop only what they started.

`ray stop` stops every Ray cluster on the machine (other runs', other engineers'), so a
test's head lives under a temp dir of its own (short: Ray's socket paths must stay under
~107 characters), is found by that dir in its processes' command lines, and is killed by
PID. A run's private cluster is found the same way, as the processes under its driver.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.cli.helpers import BIN


def record_of(root: str) -> Path:
    """Where a head started under temp dir `root` records its address (as `ray.init()` reads
    it with RAY_TMPDIR=root)."""
    return Path(root) / "ray" / "ray_current_cluster"


@dataclass
class Head:
    """A head started by `ray start --head`; `env` is what a driver on it runs with."""

    root: str  # RAY_TMPDIR: Ray's temp dir is root/ray, its record root/ray/ray_current_cluster
    address: str  # as `ray start` recorded it
    env: dict[str, str] = field(default_factory=dict)
    cpus: int = 2  # what it offers: a run on it starts min(4, cpus) CPU workers

    @property
    def record(self) -> Path:
        return record_of(self.root)

    def worker_logs(self, actor: str) -> list[str]:
        """Log files of `actor` processes the head's raylet started (one per actor)."""
        logs = glob.glob(os.path.join(self.root, "ray", "session_*", "logs", "worker-*.out"))
        logs = sorted({os.path.realpath(p) for p in logs})  # session_latest is a link
        return [p for p in logs if f":actor_name:{actor}" in Path(p).read_text(errors="replace")]


def free_port() -> int:
    from llm_evo.local_llm import free_port as _free_port

    return _free_port()


def start_head(num_cpus: int = 2, num_gpus: int = 0) -> Head:
    """`ray start --head` under a temp dir of its own, with token authentication of its own
    (Ray turns it on for `ray start` heads when a token exists; explicit here, so a joining
    driver's settings do not depend on ~/.ray of the machine)."""
    root = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_TMPDIR=root, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    proc = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
         f"--port={free_port()}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
         "--include-dashboard=false", "--disable-usage-stats"],
        capture_output=True, text=True, timeout=240, env=env)
    record = record_of(root)
    if proc.returncode != 0 or not record.is_file():
        stop_head(root)
        raise RuntimeError(f"ray start --head failed: {proc.stderr[-2000:]}")
    return Head(root, record.read_text().strip(), env, num_cpus)


def head_processes(root: str) -> list:
    """Every process of the head under `root`: those naming it on their command line (GCS,
    raylet, agents), those naming its GCS address (the Ray client server, which names no
    temp dir) and everything they started (workers rename themselves `ray::...`)."""
    import psutil

    record = record_of(root)
    marks = [root]
    if record.is_file() and (address := record.read_text().strip()):
        marks.append(f"--address={address} ")
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join(proc.info["cmdline"] or []) + " "
            if any(mark in line for mark in marks):
                found[proc.pid] = proc
                found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            continue
    return list(found.values())


def kill(procs: list, sig: int = signal.SIGKILL) -> None:
    import psutil

    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=30)


def stop_head(root: str, remove: bool = True) -> None:
    """Kill the head under `root` (and only it); `remove` its temp dir as well."""
    kill(head_processes(root))
    if remove:
        shutil.rmtree(root, ignore_errors=True)


def run_cluster_processes(driver_pid: int) -> dict[str, list]:
    """The raylet and the evaluation workers of the private cluster a run's driver started:
    all are its descendants, so nothing of another run or cluster is ever picked."""
    import psutil

    out: dict[str, list] = {"raylet": [], "workers": []}
    for proc in psutil.Process(driver_pid).children(recursive=True):
        try:
            if proc.name() == "raylet":
                out["raylet"].append(proc)
            elif "ray::EvalWorker" in " ".join(proc.cmdline()):
                out["workers"].append(proc)
        except psutil.Error:
            continue
    return out
