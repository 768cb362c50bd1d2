#!/usr/bin/env bash
# Builds llama.cpp's own command-line tools (llama-bench, llama-server, llama-imatrix,
# llama-quantize, llama-perplexity) from the llama.cpp sources vendored in the llama-cpp-python
# sdist that kecil pins, so benchmarks and tools use the exact same ggml as `import llama_cpp`.
#
# Usage: bench/build_llama_tools.sh [VERSION]      (prints the tools' bin directory when done)
#
# The result lives in ${KECIL_HOME:-$HOME/.cache/kecil}/llama.cpp-tools/VERSION/bin: the
# executables, their shared libraries and every libggml-cpu-<variant>.so next to them. Running it
# again when the tools exist does nothing. A build takes ~10-15 minutes on 2 cores, so run it in
# the background: nohup bench/build_llama_tools.sh > /tmp/llama-tools-build.log 2>&1 &
set -euo pipefail

VERSION="${1:-0.3.36}"
CACHE="${KECIL_HOME:-$HOME/.cache/kecil}"
SRC_DIR="$CACHE/src"
DEST="$CACHE/llama.cpp-tools/$VERSION"
BIN="$DEST/bin"
TARGETS=(llama-bench llama-server llama-imatrix llama-quantize llama-perplexity)
JOBS="${JOBS:-2}"

# The same ggml flags as the llama-cpp-python build in the Makefile: every x86 CPU variant is a
# loadable library and the best one is picked at run time (a -march=native build crashed here).
GGML_FLAGS=(-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON)

# ggml's AMX kernels (the sapphirerapids variant) die with SIGILL on any multi-token batch on a
# VM that advertises AMX without really providing it (this machine), and ggml would pick that
# variant first. kecil's runtime skips it unless asked (KECIL_LLAMA_CPU_VARIANT); the tools do
# the same by keeping it in a subdirectory, where ggml's search (the executable's own
# directory, then the working directory) does not look. Move it back into bin/ to use it.
AMX_VARIANTS=(sapphirerapids)
set_aside_amx() {
    local v
    for v in "${AMX_VARIANTS[@]}"; do
        if [[ -f "$BIN/libggml-cpu-$v.so" ]]; then
            mkdir -p "$BIN/amx"
            mv "$BIN/libggml-cpu-$v.so" "$BIN/amx/"
        fi
    done
}

have_tools() {
    local t
    for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
    compgen -G "$BIN/libggml-cpu-*.so" > /dev/null
}

if have_tools; then
    set_aside_amx
    echo "$BIN"
    exit 0
fi

# pip comes from kecil's venv when there is one: it is the client that already knows the index.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3

mkdir -p "$SRC_DIR"
SDIST="$SRC_DIR/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$VERSION" -d "$SRC_DIR" >&2
fi
SOURCE="$SRC_DIR/llama_cpp_python-$VERSION"
if [[ ! -f "$SOURCE/vendor/llama.cpp/CMakeLists.txt" ]]; then
    tar -xzf "$SDIST" -C "$SRC_DIR"
fi

BUILD="$DEST/build"
start=$(date +%s)
# Tests, examples and HTTPS are off: only the five tools are wanted, and they never go online.
cmake -S "$SOURCE/vendor/llama.cpp" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON \
    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    "${GGML_FLAGS[@]}" >&2
cmake --build "$BUILD" --config Release --target "${TARGETS[@]}" -j "$JOBS" >&2

# With GGML_BACKEND_DL the tools dlopen libggml-cpu-<variant>.so from their own directory; the
# build puts executables and libraries together in build/bin. RPATHs are $ORIGIN, so the copy
# stands alone and the object files can go.
mkdir -p "$BIN.tmp"
cp -a "$BUILD"/bin/. "$BIN.tmp/"
rm -rf "$BIN"
mv "$BIN.tmp" "$BIN"
set_aside_amx
if ! have_tools; then
    echo "error: build finished but $BIN lacks a tool or libggml-cpu-*.so:" >&2
    ls -l "$BIN" >&2
    exit 1
fi
rm -rf "$BUILD"
echo "built llama.cpp tools $VERSION in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
