"""Every config file under configs/, with and without its `:arg` (the data directory, by the
convention in configs/__init__.py), loads as the command line loads it, comes back locked,
and builds what a run builds first: its objective and its optimizer over the model's
abstract parameters. Then the numbers that matter: parameter counts, shapes shared by the
stages a run hands off between, and what each variant changes from the config it derives
from."""

import glob
import os

import jax
import pytest

from align_jax import cli, objectives
from align_jax.models import abstract_params, count_params
from align_jax.training.optimizer import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "*", "*.py"))
    if not p.endswith("__init__.py")
)
DATA = "/elsewhere/data"  # an `:arg`: every config reads its data from there
LLAMA3_8B = 8_030_261_248  # Meta-Llama-3-8B's published parameter count
LLAMA3_70B = 70_553_706_496  # Meta-Llama-3-70B's
VOCAB, D_MODEL = 128_256, 4096


def load(path, arg=None):
    return cli.load_config(os.path.join(REPO, path) + ("" if arg is None else f":{arg}"))


def flat(config, prefix=""):
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_stage_has_configs():
    stages = {path.split(os.sep)[1] for path in CONFIGS}
    assert stages == {"pretrain", "sft", "reward", "dpo", "grpo", "ppo", "online_dpo"}


@pytest.mark.parametrize("arg", [None, DATA], ids=["default", "data_dir"])
@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_locked_and_builds_its_objective_and_optimizer(path, arg):
    cfg = load(path, arg)
    # Locked: values change, keys never appear (a mistyped override is an error).
    for node in (cfg, cfg.objective, cfg.model, cfg.data):
        with pytest.raises(AttributeError, match="cannot be added since the config is locked"):
            node.not_a_key = 1
    cfg.total_steps = cfg.total_steps + 1
    # config.objective holds exactly its objective's keys.
    assert set(cfg.objective) == set(objectives.defaults(cfg.objective.name))

    graphdef, shapes, axes = abstract_params(cfg.model)  # no allocation, even for 8B
    assert sum(s.size for s in jax.tree.leaves(shapes)) == count_params(cfg.model)
    assert jax.tree.structure(shapes) == jax.tree.structure(
        axes, is_leaf=lambda x: isinstance(x, tuple)
    )
    objective = objectives.build(cfg, graphdef)
    assert objective.name == cfg.objective.name
    tx, schedule = make_optimizer(cfg.optimizer, cfg.total_steps)
    opt_state = jax.eval_shape(tx.init, shapes)
    assert jax.tree.leaves(opt_state)
    assert float(schedule(cfg.optimizer.warmup_steps)) == pytest.approx(cfg.optimizer.learning_rate)

    if arg is None and "tiny" in path:
        assert cfg.data.tokenizer == "data/tiny/tok.model"
    if arg is not None:  # the data directory, in every file
        for key in ("train_files", "eval_files", "tokenizer"):
            assert cfg.data[key].startswith(DATA + "/"), (key, cfg.data[key])
        assert os.path.basename(cfg.data.tokenizer) == "tok.model"


@pytest.mark.parametrize("stage", ["pretrain", "sft", "reward"])
def test_llama3_8b_configs(stage):
    cfg = load(f"configs/{stage}/llama3_8b.py")
    lm_head = VOCAB * D_MODEL
    want = LLAMA3_8B if stage != "reward" else LLAMA3_8B - lm_head + D_MODEL  # a score head
    assert count_params(cfg.model) == want
    assert (cfg.model.dtype, cfg.model.param_dtype, cfg.model.remat) == (
        "bfloat16",
        "float32",
        "full",
    )
    assert cfg.model.rope_scaling.type == "llama3" and cfg.model.rope_theta == 500000.0
    assert cfg.data.tokenizer == "tokenizers/llama3.model" and cfg.data.train_files == ""
    # With a data directory: the same recipe, CPU-sized, the shape's ratios kept.
    small = load(f"configs/{stage}/llama3_8b.py", "data/tiny")
    assert count_params(small.model) < 1_000_000
    m, s = cfg.model, small.model
    assert s.n_heads // s.n_kv_heads == m.n_heads // m.n_kv_heads == 4
    assert s.mlp_dim / s.d_model == m.mlp_dim / m.d_model == 3.5
    assert s.n_heads * s.head_dim == s.d_model and s.dtype == "float32"
    assert (s.head, small.objective.to_dict()) == (m.head, cfg.objective.to_dict())
    assert small.data.seq_len <= s.max_seq_len and small.total_steps == 20


def test_handoffs_share_the_model_shape():
    """init_from needs the same architecture: the tiny chain pretrain -> sft -> reward / dpo
    and the 8B chain share one shape (a reward model swaps only its head)."""
    for size in ("tiny", "llama3_8b"):
        models = {
            stage: load(f"configs/{stage}/{size}.py").model.to_dict()
            for stage in ("pretrain", "sft", "reward", "dpo", "grpo", "ppo")
        }
        assert models["reward"].pop("head") == "scalar"
        assert all(m.pop("head") == "lm" for s, m in models.items() if s != "reward")
        assert all(m == models["pretrain"] for m in models.values()), size


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo", "ppo"])
def test_llama3_70b_configs_are_the_8b_recipe_at_70b(stage):
    big, small = load(f"configs/{stage}/llama3_70b.py"), load(f"configs/{stage}/llama3_8b.py")
    assert count_params(big.model) == LLAMA3_70B
    m = big.model
    assert (m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.mlp_dim) == (80, 8192, 64, 8, 28672)
    diff = {k for k, v in flat(big).items() if flat(small).get(k) != v}
    assert diff <= {f"model.{k}" for k in ("d_model", "n_layers", "n_heads", "mlp_dim")}, diff
    # With a data directory: the 8B config's CPU-sized run.
    assert load(f"configs/{stage}/llama3_70b.py", DATA) == load(
        f"configs/{stage}/llama3_8b.py", DATA
    )


# What each variant may change from configs/dpo/tiny.py, the config it derives from.
VARIANTS = {
    "lora_tiny": ("model.lora.", "optimizer.learning_rate"),
    "simpo_tiny": ("objective.",),
    "cpo_tiny": ("objective.",),
    "orpo_tiny": ("objective.",),
    "kto_tiny": ("objective.", "data.train_files", "data.eval_files"),
    "listwise_tiny": ("objective.", "data."),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_dpo_variants_change_only_what_differs(name):
    base, cfg = flat(load("configs/dpo/tiny.py")), flat(load(f"configs/dpo/{name}.py"))
    changed = {k for k in set(base) | set(cfg) if base.get(k, "<absent>") != cfg.get(k, "<absent>")}
    assert changed and all(k.startswith(VARIANTS[name]) for k in changed), changed
    if name != "lora_tiny":
        assert cfg["objective.name"] == name.removesuffix("_tiny")


def test_variant_values():
    simpo = load("configs/dpo/simpo_tiny.py").objective
    assert (simpo.beta, simpo.simpo_gamma) == (2.0, 1.0)  # the SimPO repository's base setting
    lora = load("configs/dpo/lora_tiny.py")
    assert (lora.model.lora.rank, lora.model.lora.targets) == (8, "q,k,v,o,gate,up,down")
    assert count_params(lora.model) > count_params(load("configs/dpo/tiny.py").model)
    lists = load("configs/dpo/listwise_tiny.py")
    assert lists.data.list_size == 3 and lists.data.train_files.endswith("lists_train.jsonl")
    assert load("configs/dpo/kto_tiny.py").data.train_files.endswith("unpaired_train.jsonl")
