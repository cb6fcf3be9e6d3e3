"""The local LLM's llama.cpp build runs on any x86-64 CPU (issue: a -march=native build
crashed in ggml's AMX kernel on an Intel Xeon). `make install` builds it through
scripts/install_llama_cpp.sh; scripts/check_llama_build.py is the check it runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "scripts" / "check_llama_build.py"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True,
                          timeout=300)


def test_installed_llama_cpp_has_no_amx_and_no_avx512() -> None:
    proc = _check()
    assert proc.returncode == 0, proc.stderr
    assert "libggml-cpu" in proc.stderr  # the CPU backend itself was among the checked
    import llama_cpp

    lib = next(Path(llama_cpp.__file__).parent.rglob("libggml-cpu.so*"))
    symbols = subprocess.run(["nm", "-D", str(lib)], capture_output=True, text=True).stdout
    assert "ggml_backend_amx" not in symbols


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_the_check_catches_a_native_build(tmp_path: Path) -> None:
    """A library shaped like a native Xeon build (an exported AMX entry point, AVX-512 code)
    fails the check, so the check is not vacuous."""
    src = tmp_path / "amx.c"
    src.write_text(
        "#include <immintrin.h>\n"
        "void ggml_backend_amx_mul_mat(float *a, const float *b) {\n"
        "  _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b)));\n"
        "}\n")
    lib = tmp_path / "lib" / "libggml-cpu.so"
    lib.parent.mkdir()
    subprocess.run(["cc", "-O2", "-mavx512f", "-shared", "-fPIC", "-o", str(lib), str(src)],
                   check=True, timeout=120)
    proc = _check(str(lib.parent))
    assert proc.returncode == 1
    assert "AMX kernel symbols" in proc.stderr and "AVX-512" in proc.stderr


def test_the_install_never_builds_natively_nor_from_pips_cache() -> None:
    script = (REPO / "scripts" / "install_llama_cpp.sh").read_text()
    assert "-DGGML_NATIVE=OFF" in script and "-DGGML_AMX_INT8=OFF" in script
    assert "--no-cache-dir" in script and "--no-binary llama-cpp-python" in script
    makefile = (REPO / "Makefile").read_text()
    assert "scripts/install_llama_cpp.sh" in makefile
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"llama-cpp-python' not in pyproject  # pip would build it with -march=native
