# Sourced by llama-wheel.sh and llama-server.sh: what both build from, and the key of
# their caches. Both come from one llama-cpp-python source archive with the same patches
# and compiler flags, so the bench compares servers on identical kernels.
#
# Sets: version, no_amx, patches, cpu, recipe, cache_root; defines fetch_patched_source.

version=0.3.36
# A build is kept per CPU: llama.cpp compiles with -march=native.
cpu=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | sha1sum | cut -c1-12)
# Without AMX: a wheel built where AMX worked crashed every decode (general protection
# fault at `ldtilecfg`) on a virtual machine whose CPU reports AMX but faults on it.
no_amx=""
if [[ $(uname -m) == x86_64 ]]; then no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"; fi
patches=$(cd "$(dirname "${BASH_SOURCE[0]}")/llama-cpp-patches" && pwd)
# The build recipe is part of the key: a changed recipe or patch builds anew.
recipe=$( (printf '%s' "$version $no_amx"; cat "$patches"/*.patch) | sha1sum | cut -c1-8)
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/modelmint"

# fetch_patched_source PYTHON WORK: download the source archive into WORK, unpack and
# patch it; prints the source folder.
fetch_patched_source() {
  local python=$1 work=$2
  # The source archive (PyPI has no other); only it, not its build tools, from source.
  "$python" -m pip download --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$version" --dest "$work/sdist" >&2
  tar -xzf "$work/sdist/llama_cpp_python-$version.tar.gz" -C "$work"
  local src="$work/llama_cpp_python-$version" patch_file
  for patch_file in "$patches"/*.patch; do
    # No fuzz: a hunk that does not match exactly fails the build instead of landing elsewhere.
    patch --batch --forward --fuzz=0 --quiet -p1 -d "$src" <"$patch_file" >&2
  done
  echo "$src"
}
