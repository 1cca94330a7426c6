"""What this machine's CPU can do, read at run time (the CPU changes when a library moves between machines).

bf16 matrix arithmetic is native where x86 CPUs have AMX (`amx_bf16`: Intel Sapphire Rapids and later) or
AVX512_BF16 (`avx512_bf16`: Intel Cooper Lake, AMD Zen 4 and later), and on Arm CPUs with the BF16 extension
(`bf16` among /proc/cpuinfo's Features: Neoverse V1/N2, Graviton 3 and later). Elsewhere bf16 would be emulated,
slower than fp32, so it is never chosen there.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from functools import cache

BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
# The flags a figure or a precision decision depends on: what a benchmark prints, what a record is keyed by.
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str
    flags: frozenset[str]

    @property
    def bf16(self) -> bool:
        """Whether bf16 runs natively (faster than fp32) here."""
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def bf16_flags(self) -> list[str]:
        return [flag for flag in BF16_FLAGS if flag in self.flags]

    @property
    def shown_flags(self) -> list[str]:
        return [flag for flag in SHOWN_FLAGS if flag in self.flags]

    @property
    def signature(self) -> str:
        """Which CPU a decision was measured on: its model and the flags that matter, hashed short."""
        text = f"{self.arch}|{self.model}|{','.join(self.shown_flags)}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line for benchmarks and `status`: model, architecture, the flags that matter, usable cores."""
        flags = " ".join(self.shown_flags) or "none of " + " ".join(SHOWN_FLAGS)
        return f"{self.model} ({self.arch}, {usable_cores()} cores usable; flags: {flags})"


@cache
def cpu_info() -> CpuInfo:
    return parse_cpuinfo(_read_cpuinfo(), platform.machine() or "unknown")


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """The first processor's model name and flags (x86 `flags`, Arm `Features`) from /proc/cpuinfo text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model or platform.processor() or "unknown CPU", arch, flags)


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:  # not Linux: no flags known, so bf16 is never assumed
        return ""


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
