"""Check that a llama-cpp-python build runs on any x86-64 CPU: no AMX kernel, no AVX-512.

Usage: check_llama_build.py [WHEEL | FOLDER]  (none: the llama_cpp installed in this Python).
Exit 0 and one line naming the libraries checked, or exit 1 and one line per problem.

Why both checks: the AMX kernel (`ggml_backend_amx_*`) is what crashed on an Intel Xeon, and
it is only compiled in by a -march=native build on a CPU that has AMX; AVX-512 instructions
(any use of a zmm register) are the other family that a Zen 4 or Xeon build would carry and
an older or smaller CPU lacks. `nm -D` and `objdump -d` come with binutils, which any machine
that compiled the library has.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ZMM = re.compile(rb"%zmm\d|%k[1-7]\b")
AMX_OPS = re.compile(rb"\b(ldtilecfg|tileloadd|tdpbssd|tdpbf16ps|tilestored)\b")


def libraries(root: Path) -> list[Path]:
    """The ggml and llama libraries, each once (wheels hold libX.so, .so.0 and .so.0.N as
    copies of one file)."""
    import hashlib

    seen: dict[str, Path] = {}
    for p in sorted(root.rglob("*.so*"), key=lambda p: (len(p.name), p.name)):
        if ("ggml" in p.name or "llama" in p.name) and p.is_file():
            seen.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), p)
    return sorted(seen.values())


def problems(lib: Path) -> list[str]:
    out = []
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                             check=False).stdout
    amx = sorted({m.decode() for m in re.findall(rb"ggml_backend_amx_\w+", symbols)})
    if amx:
        out.append(f"{lib.name}: exports AMX kernel symbols ({', '.join(amx[:3])}...)")
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)],
                          capture_output=True, check=False).stdout
    if ZMM.search(code):
        out.append(f"{lib.name}: uses AVX-512 registers (zmm/k), not every x86-64 CPU has them")
    if AMX_OPS.search(code):
        out.append(f"{lib.name}: uses AMX tile instructions")
    return out


def installed_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise SystemExit("llama_cpp is not installed in this Python")
    return Path(spec.origin).parent


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if argv and Path(argv[0]).is_dir():
            root = Path(argv[0])
        elif argv:
            with zipfile.ZipFile(argv[0]) as zf:
                zf.extractall(tmp)
            root = Path(tmp)
        else:
            root = installed_root()
        libs = libraries(root)
        if not libs:
            print(f"no ggml/llama library found under {root}", file=sys.stderr)
            return 1
        found = [p for lib in libs for p in problems(lib)]
        for line in found:
            print(f"llama.cpp build is not portable: {line}", file=sys.stderr)
        if not found:
            print(f"llama.cpp build is portable (no AMX, no AVX-512): "
                  f"{', '.join(lib.name for lib in libs)}", file=sys.stderr)
        return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
