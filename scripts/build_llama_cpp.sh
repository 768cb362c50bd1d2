#!/usr/bin/env bash
# Build llama-cpp-python from source once per machine and install it into the given venv.
#
# The wheel is cached under $KECIL_HOME/wheels keyed by version and CMake flags, so a fresh
# clone on the same machine (CI) installs it in seconds; pip's own wheel cache is not used
# because it ignores CMAKE_ARGS and could hand back a wheel built with other flags.
set -euo pipefail
python=$1
version=$2
flags=${LLAMA_CMAKE_ARGS:?set LLAMA_CMAKE_ARGS}
cache=${KECIL_HOME:-$HOME/.cache/kecil}
key=$(printf '%s %s' "$version" "$flags" | sha256sum | cut -c1-12)
wheels="$cache/wheels/llama-cpp-python-$version-$key"

installed=$("$python" -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))" 2>/dev/null || true)
if [ "$installed" = "$version" ] && [ -f "$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/.kecil-llama-$key" ]; then
  exit 0
fi

if ! ls "$wheels"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  echo "Building llama-cpp-python $version from source (about 10-15 minutes on 2 cores, once per machine)..."
  tmp="$wheels.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$python" -m pip wheel --quiet --no-deps --no-cache-dir \
    --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$version"
  rm -rf "$wheels" && mv "$tmp" "$wheels"   # only a finished build is ever cached
fi
"$python" -m pip install --quiet --no-deps --force-reinstall "$wheels"/llama_cpp_python-"$version"-*.whl
# llama-cpp-python's own dependencies, kept to what its wheel declares
"$python" -m pip install --quiet "numpy>=1.20" "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"
touch "$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/.kecil-llama-$key"
