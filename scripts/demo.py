"""The demo behind `make demo`: a short search over the tiny family, best merge printed.

With `--strategy llm` (the default) it starts a local llama.cpp server with SmolLM2 for
the LLM strategy and stops it afterwards; `--strategy cma` or `random` need no server.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategy", default="llm", choices=["llm", "cma", "random"])
    parser.add_argument("--storage-path", default="runs/demo")
    parser.add_argument("--config", default="configs/demo.yml")
    parser.add_argument("--keep", action="store_true", help="keep an existing storage path")
    args = parser.parse_args()

    storage = REPO / args.storage_path
    if storage.exists() and not args.keep:
        shutil.rmtree(storage)
    storage.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "llm-evo"), "run", args.config,
           "--storage-path", str(storage), "--search", args.strategy]
    started = time.perf_counter()
    if args.strategy == "llm":
        from llm_evo.local_llm import MODEL_NAME, local_llm_server

        server = local_llm_server(log_path=storage / "llm_server.log")
    else:
        server = nullcontext(None)
    with server as url:
        if url:
            print(f"local LLM server (SmolLM2-135M-Instruct) at {url}", file=sys.stderr)
            cmd += ["--llm-base-url", url, "--llm-model", MODEL_NAME]
        code = subprocess.call(cmd, cwd=REPO)
    print(f"\ndemo took {time.perf_counter() - started:.0f}s (storage: {storage})",
          file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
