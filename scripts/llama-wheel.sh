#!/usr/bin/env bash
# Prints a folder holding a llama-cpp-python wheel built for this machine's CPU,
# building the wheel first when there is none yet.
#
#   bash scripts/llama-wheel.sh .venv/bin/python
#
# Why not let pip build it: llama-cpp-python compiles llama.cpp with -march=native, and
# pip caches the result under the source archive's name alone, so a wheel built on one
# machine is reused on the next whatever its CPU. Seen here: a wheel built on a CPU whose
# AMX units worked crashed every decode (general protection fault at `ldtilecfg`) on a
# virtual machine whose CPU reports AMX but faults on it. So the wheel is kept per CPU
# (the hash of its flags) and built without AMX: llama.cpp's AMX kernels are skipped,
# its AVX-512/AVX2 ones are kept. The first build takes several minutes on 2 cores.
#
# The source is patched first with scripts/llama-cpp-patches/*.patch (each says why at its
# top). They change speed, never results: see docs/architecture.md, "Patched llama.cpp".
set -euo pipefail

python=${1:?usage: llama-wheel.sh PYTHON}
source "$(dirname "$0")/llama-cpp-source.sh"
dir="$cache_root/wheels/llama-cpp-python-$version-$cpu-$recipe"

if ! compgen -G "$dir/llama_cpp_python-$version-*.whl" >/dev/null; then
  echo "building llama-cpp-python $version for this CPU (once; several minutes)" >&2
  mkdir -p "$(dirname "$dir")"
  work=$(mktemp -d "$dir.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  src=$(fetch_patched_source "$python" "$work")
  CMAKE_ARGS="-DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'" \
    "$python" -m pip wheel --quiet --no-cache-dir --no-deps "$src" --wheel-dir "$work/wheels" >&2
  # Atomic: a build cut short never leaves a folder that looks complete.
  mv -T "$work/wheels" "$dir" 2>/dev/null || compgen -G "$dir/llama_cpp_python-$version-*.whl" >/dev/null
fi
echo "$dir"
