#!/usr/bin/env bash
# Prints the path of llama.cpp's own `llama-server` built for this machine's CPU, from
# the same llama-cpp-python source archive, patches and compiler flags as the wheel
# ModelMint runs (see llama-wheel.sh), building it first when there is none yet: the
# peer `make bench-llm` measures ModelMint against.
#
#   bash scripts/llama-server.sh .venv/bin/python
#
# Only the server target is built, without its web UI and without curl (nothing is
# downloaded at run time). About five minutes on 2 cores, once per CPU and recipe.
set -euo pipefail

python=${1:?usage: llama-server.sh PYTHON}
source "$(dirname "$0")/llama-cpp-source.sh"
dir="$cache_root/llama-server/llama-server-$version-$cpu-$recipe"

if [[ ! -x "$dir/llama-server" ]]; then
  echo "building llama-server from llama-cpp-python $version for this CPU (once; ~5 minutes)" >&2
  mkdir -p "$(dirname "$dir")"
  work=$(mktemp -d "$dir.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  src=$(fetch_patched_source "$python" "$work")
  cmake -S "$src/vendor/llama.cpp" -B "$work/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
  cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$work/out"
  cp "$work/build/bin/llama-server" "$work/out/"
  # Atomic: a build cut short never leaves a folder that looks complete.
  mv -T "$work/out" "$dir" 2>/dev/null || [[ -x "$dir/llama-server" ]]
fi
echo "$dir/llama-server"
