"""How one worker turns a job into a scored model: on disk or in memory, HF or vLLM.

Every backend splits a candidate into the same steps, so the schedulers can overlap them:
`stage` (the merge; safe to run in a background thread or another actor, since it never
touches the model being scored), `activate` (make the staged merge the model to score:
load it from disk, or copy it into the resident model; merges inline when nothing was
staged), `score` and `release`.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from llm_evo.evaluation.harness import Scored
from llm_evo.evaluation.jobs import Job, WorkerSpec

JobKey = tuple


def job_key(job: Job) -> JobKey:
    return (job.generation, job.idx, job.kind, job.model_path)


@dataclass
class Staged:
    """A merged candidate waiting to be scored (or the reason its merge failed)."""

    key: JobKey
    t_merge: float
    path: str | None = None  # on disk
    owned: bool = False  # a merge output of ours, deleted after use
    tensors: list | None = None  # in memory: list[MergedTensor]
    error: str | None = None


def localize(value: Any, model_map: dict[str, str]) -> Any:
    """A merge config (or path) with input models replaced by their resharded copies."""
    if not model_map:
        return value
    if isinstance(value, str):
        return model_map.get(value, value)
    if isinstance(value, dict):
        return {k: (model_map.get(v, v) if k in ("model", "base_model", "tokenizer_source")
                    and isinstance(v, str) else localize(v, model_map))
                for k, v in value.items()}
    if isinstance(value, list):
        return [localize(v, model_map) for v in value]
    return value


def merge_options(spec: WorkerSpec, cuda: bool) -> Any:
    from mergekit.options import MergeOptions

    return MergeOptions(
        cuda=cuda,
        copy_tokenizer=True,
        trust_remote_code=spec.trust_remote_code,
        allow_crimes=spec.allow_crimes,
        lazy_unpickle=True,
        low_cpu_memory=False,
        write_model_card=False,
        quiet=True,
        # As mergekit-evolve: the run's seed also seeds each merge (DARE's random masks),
        # and `model+lora` references are merged once into a cache beside the merges.
        random_seed=spec.seed,
        lora_merge_cache=os.path.join(os.path.dirname(os.path.abspath(spec.merge_dir)),
                                      "lora_merge_cache"),
    )


class _Backend:
    """What every backend keeps: the worker's spec, device, dtype and lm-eval harness."""

    def __init__(self, spec: WorkerSpec, device: str, dtype: str, harness: Any = None):
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.harness = harness
        self.model_map = dict(spec.model_map)  # input models rewritten to local copies


class DiskBackend(_Backend):
    """The safe default: mergekit writes each candidate, the scorer loads it from there."""

    def __init__(self, spec: WorkerSpec, device: str, dtype: str, harness: Any = None):
        super().__init__(spec, device, dtype, harness)
        self._lm: Any = None

    def stage(self, job: Job) -> Staged:
        key = job_key(job)
        if job.merge_config is None:
            if job.model_path is None:
                raise ValueError("job has neither a merge config nor a model path")
            return Staged(key, 0.0, path=localize(job.model_path, self.model_map))
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge

        started = time.perf_counter()
        if job.out_path is not None:  # kept: written beside it, renamed once complete
            out = job.out_path + ".partial"
            shutil.rmtree(out, ignore_errors=True)
        else:
            out = tempfile.mkdtemp(prefix=f"g{job.generation}_c{job.idx}_",
                                   dir=self.spec.merge_dir)
        try:
            config = MergeConfiguration.model_validate(localize(job.merge_config,
                                                                self.model_map))
            cuda = self.spec.merge_cuda and self.device.startswith("cuda")
            run_merge(config, out_path=out, options=merge_options(self.spec, cuda))
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        if job.out_path is not None:
            shutil.rmtree(job.out_path, ignore_errors=True)
            os.replace(out, job.out_path)
            return Staged(key, time.perf_counter() - started, path=job.out_path)
        return Staged(key, time.perf_counter() - started, path=out, owned=True)

    def activate(self, job: Job, staged: Staged | None) -> tuple[Staged, float | None, float]:
        t_merge = None
        if staged is None:
            staged = self.stage(job)
            t_merge = staged.t_merge if job.merge_config is not None else None
        t0 = time.perf_counter()
        self._lm = self._open(staged.path)
        return staged, t_merge, time.perf_counter() - t0

    def _open(self, path: str) -> Any:
        if self.spec.backend == "vllm":
            from llm_evo.evaluation.vllm_backend import open_vllm

            return open_vllm(path, self.spec, self.dtype)
        from lm_eval.models.huggingface import HFLM

        model_args = {
            "pretrained": path,
            "device": self.device,  # always explicit: HFLM's default is "cuda"
            "dtype": self.dtype,
            "trust_remote_code": self.spec.trust_remote_code,
            **self.spec.model_args,
        }
        if self.spec.batch_size is not None:
            model_args["batch_size"] = self.spec.batch_size
        if self.spec.gpus_per_worker > 1 and self.device.startswith("cuda"):
            # A model larger than one GPU: lm-eval shards it over the worker's GPUs (the
            # ones Ray reserved, so the only ones it sees) with device_map="auto".
            model_args.setdefault("parallelize", True)
        quant = model_args.pop("quantization_config", None)
        if quant is not None:  # --load-in-8bit/4bit: lm-eval 0.4's HFLM passes its own
            model_args["pretrained"] = _quantized_model(path, quant, self.device, self.spec)
            model_args["tokenizer"] = path
        return HFLM(**model_args)

    def score(self, samples: dict[str, list[int]] | None = None) -> Scored:
        return self.harness.run(self._lm, samples)

    def release(self, staged: Staged | None) -> None:
        lm, self._lm = self._lm, None
        if lm is not None and self.spec.backend == "vllm":
            from llm_evo.evaluation.vllm_backend import close_vllm

            close_vllm(lm)
        del lm
        if staged is not None:
            self.discard(staged)
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def discard(self, staged: Staged) -> None:
        if staged.owned and staged.path and not self.spec.keep_merges:
            shutil.rmtree(staged.path, ignore_errors=True)


def _quantized_model(path: str, quant: dict, device: str, spec: WorkerSpec) -> Any:
    """The merge loaded with bitsandbytes (mergekit-evolve's BitsAndBytesConfig), for HFLM.

    Passing `quantization_config` through HFLM's model_args, as mergekit-evolve does,
    fails in lm-eval 0.4 ("got multiple values for keyword argument"), so we load it."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=BitsAndBytesConfig(**quant), dtype=torch.bfloat16,
        device_map={"": device}, trust_remote_code=spec.trust_remote_code)


class InMemoryBackend(_Backend):
    """One resident model per worker; each candidate's merged tensors are copied into it."""

    def __init__(self, spec: WorkerSpec, device: str, dtype: str, harness: Any = None):
        from llm_evo.evaluation.in_memory import InMemoryMerger, InputCache

        super().__init__(spec, device, dtype, harness)
        cuda = spec.merge_cuda and device.startswith("cuda")
        self.merge_device = device if cuda else "cpu"
        self.cache = InputCache(self.merge_device, spec.input_cache)
        self.merger = InMemoryMerger(merge_options(spec, cuda), self.merge_device, self.cache)
        self.resident: Any = None

    def _config(self, job: Job) -> dict:
        from llm_evo.evaluation.in_memory import passthrough_config

        if job.merge_config is not None:
            return localize(job.merge_config, self.model_map)
        if job.model_path is None:
            raise ValueError("job has neither a merge config nor a model path")
        return passthrough_config(localize(job.model_path, self.model_map), self.dtype)

    def stage(self, job: Job, device: str | None = None) -> Staged:
        if job.out_path is not None:
            raise ValueError("a merge kept on disk (out_path) needs the on-disk backend")
        started = time.perf_counter()
        tensors = self.merger.staged(self._config(job), device=device)
        return Staged(job_key(job), time.perf_counter() - started, tensors=tensors)

    def _ensure_resident(self, config: dict) -> float:
        if self.resident is not None:
            return self._fit_depth(config)
        from llm_evo.evaluation.in_memory import donor_of

        started = time.perf_counter()
        donor = donor_of(config)
        if self.spec.backend == "vllm":
            from llm_evo.evaluation.vllm_backend import ResidentVLLM

            self.resident = ResidentVLLM(donor, self.spec, self.dtype)
        else:
            from llm_evo.evaluation.resident import ResidentHF

            self.resident = ResidentHF(
                donor, self.device, self.dtype, batch_size=self.spec.batch_size,
                model_args=self.spec.model_args, trust_remote_code=self.spec.trust_remote_code)
        return time.perf_counter() - started + self._fit_depth(config)

    def _fit_depth(self, config: dict) -> float:
        """A data-flow candidate's layer count may differ from the resident model's: the
        HF resident is rebuilt at that depth (seconds returned). A parent, a `models:`
        merge, keeps the depth of the model the worker first loaded."""
        from llm_evo.evaluation.in_memory import output_layers

        layers = output_layers(config) or getattr(self.resident, "base_layers", None)
        if layers is None or not hasattr(self.resident, "resize"):
            return 0.0
        return self.resident.resize(layers)

    def activate(self, job: Job, staged: Staged | None) -> tuple[Staged, float | None, float]:
        config = self._config(job)
        t_init = self._ensure_resident(config)
        if staged is not None:
            return staged, None, t_init + self.resident.write(staged.tensors)
        started = time.perf_counter()
        t_copy = self.resident.write(self.merger.tensors(config))
        from llm_evo.evaluation.in_memory import trim_heap

        trim_heap()
        t_merge = time.perf_counter() - started - t_copy
        return Staged(job_key(job), t_merge), t_merge, t_init + t_copy

    def score(self, samples: dict[str, list[int]] | None = None) -> Scored:
        return self.harness.run(self.resident.lm, samples)

    def release(self, staged: Staged | None) -> None:
        if staged is not None:
            staged.tensors = None
        from llm_evo.evaluation.in_memory import trim_heap

        trim_heap()

    def discard(self, staged: Staged) -> None:
        staged.tensors = None


def make_backend(spec: WorkerSpec, device: str, dtype: str, harness: Any = None):
    if spec.backend not in ("hf", "vllm"):
        raise ValueError(f"unknown evaluation backend {spec.backend!r} (hf or vllm)")
    if spec.backend == "vllm":
        from llm_evo.evaluation.vllm_backend import require_vllm

        require_vllm()
    cls = InMemoryBackend if spec.in_memory else DiskBackend
    return cls(spec, device, dtype, harness)


def rmtree_quiet(path: str) -> None:
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
