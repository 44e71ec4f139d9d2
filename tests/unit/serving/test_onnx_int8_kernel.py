"""Which int8 weights the ONNX export picks for a CPU: the kernel must not saturate."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from modelmint.serving.onnx_int8 import _cpu_flags, int8_weight_type

AVX2 = frozenset({"sse2", "avx", "avx2", "fma"})


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (AVX2, "u8"),  # vpmaddubsw only: int8 weights would saturate 16-bit sums
        (AVX2 | {"avx512f", "avx512bw"}, "u8"),  # AVX-512 without VNNI: the same
        (AVX2 | {"avx512f", "avx512_vnni"}, "s8"),
        (AVX2 | {"avx_vnni"}, "s8"),
        (AVX2 | {"amx_int8", "amx_tile"}, "s8"),
        (frozenset({"fp", "asimd", "asimddp"}), "s8"),  # ARM: dot products do not saturate
        (frozenset(), "s8"),  # no /proc/cpuinfo: not x86 as far as we can tell
    ],
)
def test_weight_type_follows_the_cpus_integer_kernels(flags: frozenset[str], expected: str) -> None:
    assert int8_weight_type(flags) == expected


@pytest.mark.skipif(
    platform.machine() not in {"x86_64", "AMD64"} or not Path("/proc/cpuinfo").exists(),
    reason="reads the flags line of an x86 Linux /proc/cpuinfo",
)
def test_this_machines_flags_are_read() -> None:
    assert "sse2" in _cpu_flags()
