"""What distinguishes one machine's forward cost from another's: the CPU (model, family, the vector and
matrix extensions torch's kernels use) and torch's thread count.

A 16-token bfloat16 forward costs 1.3x a one-token forward on one CPU and 4.6x on another (issue 12):
AVX-512 bf16 and AMX change the matrix kernels, not just their speed. So these go into the cost
model's cache key and into every benchmark's results.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

# The CPU flags that change which matrix kernels torch runs (or how fast): the ones reported.
FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                     "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "sve", "asimd", "bf16", "i8mm")


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's "key: value" lines of /proc/cpuinfo (keys lower-cased)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """{"cpu_model", "cpu_family", "cpu_model_number", "cpu_flags"} from the text of /proc/cpuinfo.

    cpu_flags: those of FLAGS_THAT_MATTER the CPU has (x86 "flags", Arm "Features"), in that order.
    """
    fields = _cpuinfo_fields(text)
    present = set((fields.get("flags") or fields.get("features") or "").split())
    return {
        "cpu_model": fields.get("model name") or fields.get("cpu model") or platform.processor() or "unknown",
        "cpu_family": fields.get("cpu family") or fields.get("cpu architecture"),
        "cpu_model_number": fields.get("model") or fields.get("cpu part"),
        "cpu_flags": [flag for flag in FLAGS_THAT_MATTER if flag in present],
    }


@functools.cache
def cpu_info() -> dict[str, Any]:
    """This machine's CPU as parse_cpuinfo describes it (read once per process; no /proc/cpuinfo: unknowns)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def describe_cpu(info: dict[str, Any] | None = None) -> str:
    """One line: "AMD EPYC (family 26, model 2); flags avx2 fma avx512f ..."."""
    info = cpu_info() if info is None else info
    ids = ", ".join(f"{name} {info[key]}" for name, key in (("family", "cpu_family"), ("model", "cpu_model_number"))
                    if info.get(key) is not None)
    flags = " ".join(info["cpu_flags"]) or "(none of those that matter)"
    return f"{info['cpu_model']}" + (f" ({ids})" if ids else "") + f"; flags {flags}"
