#!/usr/bin/env bash
# Install llama-cpp-python[server] (the local LLM behind the demo and the LLM-strategy tests)
# built for *any* x86-64 CPU, never for the host's.
#
# Why a script: pip builds llama-cpp-python from source, and llama.cpp's default build is
# GGML_NATIVE=ON (-march=native). On an Intel Xeon with AMX that compiles ggml's AMX kernel in,
# and a library built that way crashed there (general-protection fault in
# ggml_backend_amx_mul_mat); worse, pip's wheel cache keys a built wheel by the sdist alone,
# so a native build made earlier on some machine can be handed back later, whatever CMAKE_ARGS
# say. So we build the wheel ourselves with a fixed, portable flag set (SSE4.2/AVX/AVX2/FMA/
# F16C, which every x86-64 CPU we run on has; no AVX-512, no AMX), keep it in a cache folder
# whose name carries the version and the flags, never use pip's cache for it, check the
# built library, and install exactly that wheel.
#
# Usage: scripts/install_llama_cpp.sh PYTHON
set -euo pipefail
PY=${1:-python3}
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF \
-DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF \
-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF"
KEY=$(printf '%s %s %s' "$VERSION" "$FLAGS" "$("$PY" -c 'import sys; print(sys.implementation.cache_tag)')" \
      | sha256sum | cut -c1-12)
CACHE=${LLM_EVO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-evo}/wheels/llama-cpp-python-$VERSION-$KEY
HERE=$(cd "$(dirname "$0")" && pwd)

if ! ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $VERSION for any x86-64 CPU (no -march=native, no AMX); once per machine, a few minutes" >&2
    tmp=$(mktemp -d)
    CMAKE_ARGS="$FLAGS" FORCE_CMAKE=1 "$PY" -m pip wheel -q --no-deps --no-cache-dir \
        --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$VERSION"
    "$PY" "$HERE/check_llama_build.py" "$tmp"/llama_cpp_python-*.whl
    mkdir -p "$CACHE"
    mv "$tmp"/llama_cpp_python-*.whl "$CACHE"/
    rm -rf "$tmp"
fi
wheel=$(ls "$CACHE"/llama_cpp_python-*.whl | head -n1)
# --force-reinstall --no-deps replaces any llama-cpp-python already in the environment (a
# native build included); then the server extra's dependencies, without rebuilding it.
"$PY" -m pip install -q --no-cache-dir --force-reinstall --no-deps "$wheel"
"$PY" -m pip install -q --no-cache-dir --only-binary llama-cpp-python "${wheel}[server]"
"$PY" "$HERE/check_llama_build.py"
