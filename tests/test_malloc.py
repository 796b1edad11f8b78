"""align_jax/malloc.py: after `keep_freed_memory()` a freed 256 MB block is reused without
page faults; glibc's default unmaps it, so touching a new one faults every page again."""

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from align_jax.malloc import keep_freed_memory

    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(2**25)  # 256 MB, touched
        del block
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"kept": kept, "faults": faults}))
    """
)


def run(mode: str, **env) -> dict:
    import os

    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
        env={**os.environ, **env},
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_only_when_kept():
    # Faults per fresh block: 65,536 with 4 KiB pages, ~640 with transparent huge pages.
    default = run("default")
    first = default["faults"][0]
    assert first >= 100 and all(f > 0.9 * first for f in default["faults"]), default
    kept = run("keep")
    assert kept["kept"] is True
    assert kept["faults"][0] > 0.9 * first
    assert max(kept["faults"][1:]) < 0.05 * first, kept
    opted_out = run("keep", ALIGN_JAX_DEFAULT_MALLOC="1")
    assert opted_out["kept"] is False
    assert all(f > 0.9 * first for f in opted_out["faults"]), opted_out
