"""The host allocator for CPU runs: keep freed memory for reuse.

By default glibc's malloc hands every allocation over 32 MB (and any large one a non-main
thread makes) straight to mmap and unmaps it on free. A jitted step on the CPU backend
allocates its temporaries afresh each call, so every step page-faults all of them again:
for the DPO step of tools/bench_dpo.py (1 GB of temporaries) that was 247k minor faults and
about 0.55 s of kernel time a step, and keeping freed memory made the step 32% faster.
`keep_freed_memory()` sets one arena, an mmap threshold of 2 GB and no trimming, so the
second step reuses the first's pages. The process keeps its peak heap for its lifetime.

The command lines (`align_jax.train`, `generate`, `score`) call it first thing; on TPU and
GPU the device's memory is not malloc's, and the setting only concerns host buffers.
This module imports nothing but the standard library, so benchmark workers in other
environments can use it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_OPT_OUT = "ALIGN_JAX_DEFAULT_MALLOC"  # set to 1 to leave glibc's malloc settings alone


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed memory in the process for reuse. True when set;
    False, and nothing done, off Linux + glibc or with ALIGN_JAX_DEFAULT_MALLOC=1. Call it
    before jax (or torch) starts threads."""
    if os.environ.get(_OPT_OUT) == "1" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
    return bool(
        libc.mallopt(m_arena_max, 1)
        & libc.mallopt(m_mmap_threshold, 2**31 - 1)  # the most an int argument takes
        & libc.mallopt(m_trim_threshold, -1)  # read as SIZE_MAX: never trim
    )
