"""WandbTracker against real wandb in offline mode, read back from the run's own files.

wandb 0.31 writes offline runs only as a `.wandb` transaction log (no history/summary JSON),
so `read_offline_run` decodes that log: W&B's leveldb-style framing of `Record` protobufs.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llm_evo.config import RunConfig
from llm_evo.errors import ConfigError
from llm_evo.genome import Genome
from llm_evo.report.tracking import WANDB_RUN_EVENT, WandbTracker, make_tracker
from llm_evo.storage import CandidateRecord, RunStorage

SECRET = "sk-test-never-logged-4242"
ARITH, CAT = "tiny_skill_arith/acc,none", "tiny_skill_category/acc,none"

# ---- reading an offline run back ---------------------------------------------------------
_BLOCK = 32768
_HEADER = 7  # both the file header ("<4sHB": ":W&B", magic, version) and each record header


def _records(path: Path) -> list[bytes]:
    """The payloads of a W&B transaction log (leveldb log framing: full/first/middle/last)."""
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending, out = _HEADER, b"", []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        if kind == 0 and length == 0:
            pos += left - _HEADER
            continue
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
    return out


def _items(items) -> dict[str, Any]:
    """Items as a dict; a nested key (how a logged Table arrives) becomes nested dicts."""
    out: dict[str, Any] = {}
    for it in items:
        *parents, leaf = [it.key] if it.key else list(it.nested_key)
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = json.loads(it.value_json)
    return out


def _parse_offline_run(log_file: Path) -> dict[str, Any] | None:
    """The decoded log, or None while wandb-core is still writing it (no exit record yet)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    raw = log_file.read_bytes()
    out: dict[str, Any] = {"history": [], "summary": {}, "config": {}, "artifacts": [],
                           "raw": raw}
    exited = False
    try:
        payloads = _records(log_file)
    except (ValueError, struct.error):
        return None
    for payload in payloads:
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except DecodeError:
            return None
        which = rec.WhichOneof("record_type")
        if which == "run":
            out["id"] = rec.run.run_id
            out["config"].update(_items(rec.run.config.update))
        elif which == "config":
            out["config"].update(_items(rec.config.update))
        elif which == "history":
            out["history"].append(_items(rec.history.item))
        elif which == "summary":
            out["summary"].update(_items(rec.summary.update))
        elif which == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type,
                                     "files": [e.path for e in rec.artifact.manifest.contents]})
        elif which == "exit":
            exited = True
    return out if exited else None


def read_offline_run(run_dir: Path, timeout: float = 60.0) -> dict[str, Any]:
    """{"id", "config", "history": [row per step], "summary", "artifacts", "raw"}.

    `run.finish()` can return before wandb-core has flushed the log, so this waits for the
    run's exit record rather than reading a half-written file.
    """
    deadline = time.monotonic() + timeout
    while True:
        logs = list(run_dir.glob("run-*.wandb"))
        parsed = _parse_offline_run(logs[0]) if len(logs) == 1 else None
        if parsed is not None:
            return parsed
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_dir}: no complete W&B transaction log after {timeout}s")
        time.sleep(0.1)


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


def table(run_dir: Path, cell: dict) -> dict:
    """A logged wandb.Table's JSON (history holds a reference to the media file)."""
    if cell.get("_type") != "table-file":
        raise ValueError(f"not a table reference: {cell}")
    return json.loads((run_dir / "files" / cell["path"]).read_text())


# ---- a stored run that looks like a real one ---------------------------------------------
def _config(**wandb: Any) -> RunConfig:
    return RunConfig.model_validate({
        "genome": {"models": ["m/ft_arith", "m/ft_category"], "merge_method": "task_arithmetic",
                   "base_model": "m/base", "layer_granularity": 4, "normalize": False},
        "tasks": ["tiny_skill_arith", "tiny_skill_category"],
        "search": {"strategy": "llm", "population_size": 3, "max_generations": 4},
        "wandb": {"enabled": True, "project": "llm-evo-test", **wandb},
    })


def _genome(config: RunConfig) -> Genome:
    return Genome(config.genome, config.genome.models, config.genome.base_model, num_layers=8)


def _cand(gen: int, idx: int, arith: float, cat: float, kinship: float | None = None,
          penalty: float = 0.0) -> CandidateRecord:
    raw = arith + cat
    return CandidateRecord(
        generation=gen, idx=idx, kind="candidate", label=None,
        genotype=[0.1 * (idx + 1), 0.2 + gen / 10, 0.3, 0.9 - idx / 10],
        merge_config=f"merge_method: task_arithmetic  # gen {gen} idx {idx}\n",
        results={ARITH: arith, CAT: cat}, score=raw - penalty, raw_score=raw, kinship=kinship,
        status="ok", error=None, t_merge=0.5, t_eval=2.0, t_total=2.6, worker=f"w{idx % 2}",
    )


def _failed(gen: int, idx: int) -> CandidateRecord:
    return CandidateRecord(gen, idx, "candidate", None, [0.0, 0.0, 0.0, 0.0], None, None, None,
                           "failed", "InvalidGenotypeError: weights sum to zero")


def build_storage(root: Path) -> tuple[RunStorage, int, RunConfig]:
    config = _config()
    storage = RunStorage(root)
    run_id = storage.create_run(config.canonical_json(), config.config_hash(), 7, {})
    for i, (label, a, c) in enumerate([("ft_arith", 0.6, 0.1), ("ft_category", 0.2, 0.5),
                                        ("base", 0.25, 0.25)]):
        storage.record(run_id, CandidateRecord(-1, i, "parent", label, None, None,
                                               {ARITH: a, CAT: c}, a + c, "ok", None,
                                               t_eval=1.5, t_total=1.5))
    gens = {
        0: [_cand(0, 0, 0.4, 0.2), _cand(0, 1, 0.5, 0.3), _failed(0, 2)],
        1: [_cand(1, 0, 0.5, 0.2, 0.91, 0.02), _cand(1, 1, 0.3, 0.1, 0.95, 0.05),
            _cand(1, 2, 0.6, 0.4, 0.97, 0.07)],
        2: [_cand(2, 0, 0.45, 0.25, 0.9), _cand(2, 1, 0.5, 0.3, 0.93), _cand(2, 2, 0.2, 0.2)],
    }
    for recs in gens.values():
        for rec in recs:
            storage.record(run_id, rec)
    storage.add_events(run_id, [
        {"kind": "sigma", "generation": 0, "sigma": 0.2, "improved": False, "reason": "gen 0"},
        {"kind": "llm_exchange", "generation": 1, "prompt": "Generation 1 ...", "response": "{}",
         "thought": "raise arith weight in late layers", "response_format": "json_object",
         "attempt": 1, "error": "no genomes", "outcome": "rejected"},
        {"kind": "llm_exchange", "generation": 1, "prompt": "Generation 1 ...", "response": "{}",
         "thought": "balance both experts", "response_format": "json_object", "attempt": 2,
         "error": None, "outcome": "accepted"},
        {"kind": "kinship_diversity", "generation": 1, "mean": 0.94, "min": 0.91},
        {"kind": "llm_exchange", "generation": 2, "prompt": "Generation 2 ...", "response": "{}",
         "thought": "keep the best, explore category", "response_format": "json_object",
         "attempt": 1, "error": None, "outcome": "accepted"},
    ])
    return storage, run_id, config


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_tracker_logs_generations_tables_and_artifact(offline: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    storage, run_id, config = build_storage(tmp_path / "run")
    # What W&B could pick up from the process: an environment variable and the command line.
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setattr(sys, "argv", ["llm-evo", "run", "cfg.yml", "--api-key", SECRET])
    best_config = tmp_path / "run" / "best_config.yaml"
    best_config.write_text("merge_method: task_arithmetic\n")

    tracker = make_tracker(config, storage, run_id, genome=_genome(config))
    assert isinstance(tracker, WandbTracker)
    tracker.start()
    wandb_id = tracker.wandb_id
    for gen in range(3):
        tracker.log_generation(gen)
    tracker.finish(best_config, "finished")

    assert storage.events(run_id, kind=WANDB_RUN_EVENT) == [
        {"generation": None, "kind": WANDB_RUN_EVENT, "id": wandb_id}]
    (run_dir,) = offline_runs(offline)
    run = read_offline_run(run_dir)
    assert run["id"] == wandb_id
    assert SECRET.encode() not in run["raw"]
    assert run["config"]["genome"]["merge_method"] == "task_arithmetic"
    assert run["config"]["search"]["strategy"] == "llm"

    rows = {row["_step"]: row for row in run["history"]}
    assert sorted(rows) == [0, 1, 2]
    g0, g1, g2 = rows[0], rows[1], rows[2]
    assert g0["score/best_so_far"] == pytest.approx(0.8)
    assert g1["score/best_so_far"] == pytest.approx(1.0)
    assert g2["score/best_so_far"] == pytest.approx(1.0)  # best so far, not of generation 2
    assert g2["score/generation_best"] == pytest.approx(0.8)
    assert g0["score/mean"] == pytest.approx(0.7)  # failed candidates are not in the mean
    assert g0["score/std"] == pytest.approx(0.1)
    fitness = [0.7 - 0.02, 0.4 - 0.05, 1.0 - 0.07]  # the penalised scores the strategy saw
    assert g1["score/mean"] == pytest.approx(sum(fitness) / 3)
    assert g0["candidates/failed"] == 1 and g1["candidates/failed"] == 0
    assert g0["candidates/evaluated"] == 3
    assert g1[f"metrics/{ARITH}/mean"] == pytest.approx(0.4667, abs=1e-4)
    assert g1[f"metrics/{ARITH}/min"] == pytest.approx(0.3)
    assert g1[f"metrics/{CAT}/max"] == pytest.approx(0.4)
    assert g1["kinship/mean"] == pytest.approx(0.94) and g1["kinship/min"] == pytest.approx(0.91)
    assert "kinship/mean" not in g0 and "kinship/mean" not in g2
    assert g0["strategy/sigma"] == pytest.approx(0.2)
    # mergekit-evolve's keys, so its dashboards show our runs: raw scores, not penalised
    assert g0["best_score"] == pytest.approx(0.8) and g1["best_score"] == pytest.approx(1.0)
    assert [rows[g]["evaluations"] for g in range(3)] == [3, 6, 9]
    assert g1["population/score_mean"] == pytest.approx((0.7 + 0.4 + 1.0) / 3)
    assert g0["population/score_std"] == pytest.approx(0.1)
    arith = ARITH.replace("/", "_").replace(",none", "")
    assert g1[f"population/{arith}_mean"] == pytest.approx(0.4667, abs=1e-4)
    assert g1[f"population/{arith}_min"] == pytest.approx(0.3)
    assert g1[f"population/{arith}_max"] == pytest.approx(0.6)

    thoughts = table(run_dir, g2["llm/thoughts"])
    assert thoughts["columns"] == ["generation", "attempt", "outcome", "thought"]
    assert thoughts["data"] == [
        [1, 1, "rejected", "raise arith weight in late layers"],
        [1, 2, "accepted", "balance both experts"],
        [2, 1, "accepted", "keep the best, explore category"],
    ]
    assert "llm/thoughts" not in g0  # no exchange yet
    genome_table = table(run_dir, g1["best/genome"])
    assert genome_table["columns"] == ["gene", "axis", "value"]
    assert [r[1] for r in genome_table["data"]] == [
        "layers 0-3 / ft_arith / * / weight", "layers 0-3 / ft_category / * / weight",
        "layers 4-7 / ft_arith / * / weight", "layers 4-7 / ft_category / * / weight"]
    assert [r[2] for r in genome_table["data"]] == pytest.approx([0.3, 0.3, 0.3, 0.7])
    assert "best/genome" not in g2  # unchanged best: not logged again

    summary = run["summary"]
    assert summary["best/score"] == pytest.approx(1.0)
    assert summary["best/generation"] == 1
    assert summary["parents/ft_arith/score"] == pytest.approx(0.7)
    assert summary["status"] == "finished"
    (artifact,) = [a for a in run["artifacts"] if a["type"] == "merge-config"]
    assert artifact["files"] == ["best_config.yaml"]


def test_gene_index_labels_without_genome(offline: Path, tmp_path: Path) -> None:
    storage, run_id, config = build_storage(tmp_path / "run")
    tracker = make_tracker(config, storage, run_id)
    tracker.start()
    tracker.log_generation(0)
    tracker.finish(None, "failed")
    run = read_offline_run(offline_runs(offline)[0])
    genome_table = table(offline_runs(offline)[0], run["history"][0]["best/genome"])
    assert [r[1] for r in genome_table["data"]] == ["gene 0", "gene 1", "gene 2", "gene 3"]
    assert run["summary"]["status"] == "failed"
    assert not [a for a in run["artifacts"] if a["type"] == "merge-config"]


def test_second_tracker_resumes_the_same_wandb_run(offline: Path, tmp_path: Path) -> None:
    storage, run_id, config = build_storage(tmp_path / "run")
    first = make_tracker(config, storage, run_id)
    first.start()
    first.log_generation(0)
    first.finish(None, "interrupted")
    wandb_id = storage.events(run_id, kind=WANDB_RUN_EVENT)[0]["id"]

    # Offline run folders are named by the second they start in; keep the two apart.
    started = int(time.time())
    while int(time.time()) == started:
        time.sleep(0.05)
    # A new process: a fresh storage handle on the same ledger, as `llm-evo run --resume` has.
    reopened = RunStorage(tmp_path / "run")
    second = make_tracker(config, reopened, run_id)
    second.start()
    assert second.resumed and second.wandb_id == wandb_id
    second.log_generation(1)
    second.log_generation(2)
    second.finish(None, "finished")

    assert len(reopened.events(run_id, kind=WANDB_RUN_EVENT)) == 1
    runs = [read_offline_run(d) for d in offline_runs(offline)]
    assert [r["id"] for r in runs] == [wandb_id, wandb_id]
    assert [row["_step"] for row in runs[1]["history"]] == [1, 2]


def test_another_stored_run_gets_its_own_wandb_run(offline: Path, tmp_path: Path) -> None:
    storage, run_id, config = build_storage(tmp_path / "run")
    other = storage.create_run(config.canonical_json(), config.config_hash(), 7, {})
    ids = []
    for rid in (run_id, other):
        tracker = make_tracker(config, storage, rid)
        tracker.start()
        ids.append(tracker.wandb_id)
        tracker.finish(None, "finished")
    assert ids[0] != ids[1]


def test_make_tracker_disabled_and_overrides(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    storage, run_id, config = build_storage(tmp_path / "run")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert make_tracker(config, storage, run_id) is None
    assert make_tracker(config, storage, run_id, overrides={"mode": "offline"}) is not None
    monkeypatch.setenv("WANDB_MODE", "offline")
    off = config.model_copy(update={"wandb": config.wandb.model_copy(update={"enabled": False})})
    assert make_tracker(off, storage, run_id) is None
    assert make_tracker(config, storage, run_id, overrides={"mode": "disabled"}) is None
    on = make_tracker(off, storage, run_id,
                      overrides={"wandb.enabled": True, "tags": ["a", "b"], "project": None})
    assert on is not None and on.cfg.tags == ("a", "b") and on.cfg.project == "llm-evo-test"
    with pytest.raises(ConfigError, match="unknown wandb option"):
        make_tracker(config, storage, run_id, overrides={"colour": "red"})
    with pytest.raises(ConfigError, match="wandb.mode"):
        make_tracker(config, storage, run_id, overrides={"mode": "sometimes"})


def test_log_before_start_is_an_error(tmp_path: Path) -> None:
    storage, run_id, config = build_storage(tmp_path / "run")
    with pytest.raises(RuntimeError, match="start"):
        make_tracker(config, storage, run_id).log_generation(0)


def test_pareto_front_is_logged_as_a_table(offline: Path, tmp_path: Path) -> None:
    """A pareto run logs the ledger's front as `pareto/front`, again only when it changes."""
    from llm_evo.session.pareto import ParetoHook

    storage, run_id, _ = build_storage(tmp_path / "run")
    config = RunConfig.model_validate({**_config().model_dump(),
                                       "search": {"strategy": "nsga2", "objective": "pareto",
                                                  "population_size": 3}})
    hook = ParetoHook(config, storage, tmp_path / "run")
    tracker = make_tracker(config, storage, run_id)
    tracker.start()
    for gen in range(3):
        hook.after_generation(run_id, gen, None)  # the front over everything recorded
        tracker.log_generation(gen)
    tracker.finish(None, "finished")
    run_dir = offline_runs(offline)[0]
    history = read_offline_run(run_dir)["history"]
    assert "pareto/front" in history[0]
    assert "pareto/front" not in history[1] and "pareto/front" not in history[2]  # unchanged
    front = table(run_dir, history[0]["pareto/front"])
    assert front["columns"] == ["generation", "idx", ARITH, CAT, "score"]
    # (1, 2) dominates every other candidate: 0.6 arith, 0.4 category
    assert front["data"] == [[1, 2, 0.6, 0.4, pytest.approx(1.0)]]


def test_screened_generation_metrics_count_estimates_apart(tmp_path: Path) -> None:
    """A screened candidate (status `estimated`) is neither a failure nor a full score."""
    from dataclasses import replace

    from llm_evo.report.tracking import generation_metrics

    storage, run_id, _ = build_storage(tmp_path / "run")
    plain = generation_metrics(storage, run_id, 2)
    assert "screening/estimated" not in plain
    screened = replace(_cand(2, 2, 0.7, 0.7), status="estimated")  # looks best, estimated
    storage.record(run_id, screened)
    storage.add_events(run_id, [{"kind": "screening", "generation": 2, "promoted": [0, 1]}])
    got = generation_metrics(storage, run_id, 2)
    assert got["candidates/evaluated"] == 3 and got["candidates/failed"] == 0
    assert got["screening/fully_scored"] == 2 and got["screening/estimated"] == 1
    assert got["screening/estimate_max"] == pytest.approx(1.4)
    assert got["score/best_so_far"] == plain["score/best_so_far"] < 1.4  # never an estimate
