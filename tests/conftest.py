"""Test set-up: 8 simulated CPU devices, so every run exercises real sharding; one compilation
cache for the session; and the runs many tests start from, built once per session.

XLA_FLAGS (and the cache settings) must be set before jax is imported anywhere; they include
LLVM at -O0, which halves the compile time that dominates these tiny programs.

The compilation cache: many tests compile the same programs (the tiny model's train step in
another workdir, the same CLI run in a subprocess), and on a loaded CPU a compile takes a
minute where reading it back takes a second. The session gets a fresh cache folder, shared
with the subprocesses it starts and removed at the end, so every session compiles from
scratch once. Set JAX_COMPILATION_CACHE_DIR to keep a cache across sessions instead.

Shared runs (session-scoped; a test that writes to one copies its workdir first, with
`tiny_runs.copy_run`):
- `tiny_data`: the tiny corpus, preference tasks and a 384-piece tokenizer.
- `base_run`: 4 steps of `tiny_runs.tiny_config` (constant schedule, checkpoints at 2 and 4).
- `full_run`: the same config for 16 steps uninterrupted: what a resumed run must equal.
- `chain_data`, `sft_run`: pretrain -> SFT of the `tiny` preset, the start of every later stage.
"""

import dataclasses
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The tests' programs are tiny and compiled once each, so compiling dominates their time:
# LLVM at -O0 halves it (tests/objectives and tests/models: 329 s -> 171 s on 2 cores) and
# leaves the arithmetic as it is (no fast-math either way; XLA's own HLO passes still run).
# Subprocesses inherit it through `tiny_runs.xla_env`.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="align_jax_test_compile_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
# Cache every program: under load even the small ones take seconds to compile.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)

# The training tests' shared helpers (tests/training/tiny_runs.py), importable from any test.
# The fixtures below import them (and the training stack) when first used, so collecting
# tests that need none of it does not depend on it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "training"))


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 simulated CPU devices, got {len(devs)}"
    return devs


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> pathlib.Path:
    """The tiny corpus (600 train / 40 eval documents), 64 / 16 records of every task kind
    (sft, pairs, lists, unpaired, rl, r1) and a tokenizer of `tiny_runs.VOCAB` pieces."""
    import tiny_runs
    from tiny_corpus import write_corpus
    from tiny_tasks import write_tasks

    from align_jax.data.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tiny_data")
    write_corpus(d, n_train=600, n_eval=40, seed=0)
    write_tasks(d, n_train=64, n_eval=16, seed=0)
    train_tokenizer([str(d / "train.jsonl")], str(d / "tok"), tiny_runs.VOCAB)
    return d


@pytest.fixture(scope="session")
def base_run(tiny_data, tmp_path_factory) -> pathlib.Path:
    """The workdir of 4 steps of `tiny_config` with a constant schedule (so resuming it
    with a larger `total_steps` continues the same run), every step logged, checkpoints at
    steps 2 and 4. Read-only: copy it to resume or change it."""
    import tiny_runs

    from align_jax.training import loop

    workdir = tmp_path_factory.mktemp("base_run") / "run"
    cfg = tiny_runs.constant_lr(tiny_data, 4, checkpoint_every=2)
    loop.train(cfg, str(workdir))
    return workdir


@pytest.fixture(scope="session")
def full_run(tiny_data, tmp_path_factory) -> pathlib.Path:
    """`base_run`'s config run uninterrupted for 16 steps, saving only at the end: the
    reference every stopped-and-resumed run's metrics must equal. Read-only."""
    import tiny_runs

    from align_jax.training import loop

    workdir = tmp_path_factory.mktemp("full_run") / "run"
    loop.train(tiny_runs.constant_lr(tiny_data, FULL_RUN_STEPS, checkpoint_every=100), str(workdir))
    return workdir


FULL_RUN_STEPS = 16


@pytest.fixture(scope="session")
def chain_data(tmp_path_factory) -> pathlib.Path:
    """Data for the stage chain of the `tiny` preset: the corpus (1500 / 50 documents),
    800 / 100 records of every task kind and a 512-piece tokenizer."""
    import tiny_runs  # noqa: F401  (puts experiments/ on the path)
    from tiny_corpus import write_corpus
    from tiny_tasks import write_tasks

    from align_jax.data.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("chain_data")
    write_corpus(d, n_train=1500, n_eval=50, seed=0)
    write_tasks(d, n_train=800, n_eval=100, seed=0)
    train_tokenizer([str(d / "train.jsonl")], str(d / "tok"), 512)
    return d


@dataclasses.dataclass(frozen=True)
class Chain:
    data: pathlib.Path  # chain_data
    pretrain: pathlib.Path  # workdir: 80 steps on a 2x2x2 mesh
    sft: pathlib.Path  # workdir: 60 steps from `pretrain` on a 1x8x1 mesh, evaluated at 60


@pytest.fixture(scope="session")
def sft_run(chain_data, tmp_path_factory) -> Chain:
    """pretrain -> SFT with configs/{pretrain,sft}/tiny.py, each stage on another mesh layout
    and logged every 10 steps: the model every preference stage starts from. Read-only."""
    import tiny_runs

    from align_jax.training import loop

    runs = tmp_path_factory.mktemp("chain")
    pre = tiny_runs.stage_config(
        "pretrain/tiny.py", chain_data, total_steps=80, log_every=10, eval_every=0,
        checkpoint_every=80,
        **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "data.seq_len": 64},
    )  # fmt: skip
    loop.train(pre, str(runs / "pre"))
    sft = tiny_runs.stage_config(
        "sft/tiny.py", chain_data, total_steps=60, log_every=10, eval_every=60,
        checkpoint_every=60, init_from=str(runs / "pre"),
        **{"mesh.data": 1, "mesh.fsdp": 8, "mesh.tensor": 1, "data.seq_len": 64},
    )  # fmt: skip
    loop.train(sft, str(runs / "sft"))
    return Chain(chain_data, runs / "pre", runs / "sft")


@pytest.fixture(scope="session")
def reward_run(sft_run, tmp_path_factory) -> pathlib.Path:
    """configs/reward/tiny.py trained 40 steps from `sft_run` (held-out accuracy 1.0): the
    reward model PPO and online DPO are judged by, and PPO's value model starts from.
    Read-only."""
    import tiny_runs

    from align_jax.training import loop

    workdir = tmp_path_factory.mktemp("reward_run") / "run"
    cfg = tiny_runs.stage_config(
        "reward/tiny.py", sft_run.data, init_from=str(sft_run.sft), total_steps=40,
        log_every=10, eval_every=0, checkpoint_every=40,
    )  # fmt: skip
    loop.train(cfg, str(workdir))
    return workdir
