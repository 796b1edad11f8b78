"""Every config file loads, locks, and builds its model abstractly; shapes match the papers."""

import glob
import importlib.util
import os

import jax
import pytest

from align_jax.models import abstract_params, count_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.py")))


def load(path, arg=None):
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_builds_abstract_model(path):
    cfg = load(path)
    for key in (
        "total_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "seed",
        "init_from",
        "mesh",
        "model",
        "optimizer",
        "data",
        "objective",
    ):
        assert key in cfg, key
    _, shapes, axes = abstract_params(cfg.model)  # no allocation, even for 8B
    assert sum(s.size for s in jax.tree.leaves(shapes)) == count_params(cfg.model)
    assert jax.tree.structure(shapes) == jax.tree.structure(
        axes, is_leaf=lambda x: isinstance(x, tuple)
    )


def test_llama3_8b_has_8b_parameters():
    cfg = load(os.path.join(REPO, "configs", "pretrain", "llama3_8b.py"))
    assert count_params(cfg.model) == 8_030_261_248  # Meta-Llama-3-8B's published count
    small = load(os.path.join(REPO, "configs", "pretrain", "llama3_8b.py"), "runlocal")
    assert count_params(small.model) < 1_000_000
