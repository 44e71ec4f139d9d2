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
version=0.3.36
cpu=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | sha1sum | cut -c1-12)
no_amx=""
if [[ $(uname -m) == x86_64 ]]; then no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"; fi
patches=$(cd "$(dirname "$0")/llama-cpp-patches" && pwd)
# The build recipe is part of the key: a changed recipe or patch builds a new wheel.
recipe=$( (printf '%s' "$version $no_amx"; cat "$patches"/*.patch) | sha1sum | cut -c1-8)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/modelmint/wheels/llama-cpp-python-$version-$cpu-$recipe"

if ! compgen -G "$dir/llama_cpp_python-$version-*.whl" >/dev/null; then
  echo "building llama-cpp-python $version for this CPU (once; several minutes)" >&2
  mkdir -p "$(dirname "$dir")"
  work=$(mktemp -d "$dir.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # The source archive (PyPI has no other); only it, not its build tools, from source.
  "$python" -m pip download --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$version" --dest "$work/sdist" >&2
  tar -xzf "$work/sdist/llama_cpp_python-$version.tar.gz" -C "$work"
  src="$work/llama_cpp_python-$version"
  for patch_file in "$patches"/*.patch; do
    # No fuzz: a hunk that does not match exactly fails the build instead of landing elsewhere.
    patch --batch --forward --fuzz=0 --quiet -p1 -d "$src" <"$patch_file" >&2
  done
  CMAKE_ARGS="-DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'" \
    "$python" -m pip wheel --quiet --no-cache-dir --no-deps "$src" --wheel-dir "$work/wheels" >&2
  # Atomic: a build cut short never leaves a folder that looks complete.
  mv -T "$work/wheels" "$dir" 2>/dev/null || compgen -G "$dir/llama_cpp_python-$version-*.whl" >/dev/null
fi
echo "$dir"
