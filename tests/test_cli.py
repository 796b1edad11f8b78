"""Command-line errors: a bad flag, config file or override is one line on stderr naming the
key or file and what was expected, with a non-zero exit status and no traceback."""

import os
import subprocess
import sys

import pytest

from align_jax import cli, generate, score, train
from align_jax.interop import hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DPO = os.path.join(REPO, "configs", "dpo", "tiny.py")


def run_main(main, argv, capsys):
    """(exit status, the one stderr line): main must report in exactly one line."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return code, err[0]


def train_error(capsys, *argv):
    code, line = run_main(train.main, [f"--config={DPO}", "--workdir=/nonexistent", *argv], capsys)
    assert code == 2
    return line


def test_unknown_key_names_it_suggests_and_lists_the_valid_keys(capsys):
    line = train_error(capsys, "--config.objective.betaa=1")
    assert "--config.objective.betaa: unknown config key 'objective.betaa'" in line
    assert "did you mean objective.beta?" in line
    assert "keys of config.objective: beta, f_alpha, f_divergence, label_smoothing" in line
    # A misspelt group: the suggestion is the full key, the list the top level.
    line = train_error(capsys, "--config.optimzer.learning_rate=1e-3")
    assert "did you mean optimizer.learning_rate?" in line
    assert "keys of the config: " in line and "total_steps" in line
    line = train_error(capsys, "--config.model=small")
    assert "--config.model is a group of keys, not a value" in line and "model.d_model" in line
    line = train_error(capsys, "--config.model.d_model.size=3")
    assert "config.model.d_model is a value, not a group of keys" in line


def test_a_key_of_another_objective_is_unknown(capsys):
    line = train_error(capsys, "--config.objective.simpo_gamma=0.5")  # a DPO config
    assert "unknown config key 'objective.simpo_gamma'" in line


def test_bad_values_name_the_key_and_the_type(capsys):
    line = train_error(capsys, "--config.total_steps=abc")
    assert line == "error: --config.total_steps: expected an integer, got 'abc' (now 60)"
    line = train_error(capsys, "--config.objective.beta=high")
    assert "--config.objective.beta: expected a number, got 'high' (now 0.1)" in line
    line = train_error(capsys, "--config.objective.wpo=maybe")
    assert "--config.objective.wpo: expected true or false, got 'maybe'" in line
    line = train_error(capsys, "--config.sharding.rules=3")
    assert "expected a Python tuple literal, got '3'" in line
    line = train_error(capsys, "--config.data.tokenizer")
    assert "--config.data.tokenizer needs a value" in line


def test_missing_flags_and_unknown_flags(capsys):
    code, line = run_main(train.main, [f"--config={DPO}"], capsys)
    assert code == 2
    assert "the following arguments are required: --workdir" in line
    assert "python -m align_jax.train --help" in line
    code, line = run_main(train.main, ["--workdir=/x"], capsys)
    assert code == 2 and "required: --config" in line
    code, line = run_main(train.main, [f"--config={DPO}", "--workdir=/x", "--nope=1"], capsys)
    assert code == 2 and "unrecognized arguments: --nope=1" in line


def test_config_file_errors_name_the_file(tmp_path, capsys):
    def error(spec):
        code, line = run_main(train.main, [f"--config={spec}", "--workdir=/x"], capsys)
        assert code == 2
        return line

    missing = os.path.join(REPO, "configs", "dpo", "tiny_dpo.py")
    line = error(missing)
    assert f"config file '{missing}' does not exist" in line
    assert "did you mean" in line and "configs/dpo/tiny.py" in line

    no_fn = tmp_path / "no_fn.py"
    no_fn.write_text("X = 1\n")
    assert f"{no_fn}: defines no get_config(arg=None)" in error(str(no_fn))

    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None):\n    return (\n\nx = [\n")
    line = error(str(broken))
    assert line.startswith(f"error: {broken}:") and "syntax error" in line

    raises = tmp_path / "raises.py"
    raises.write_text(
        "from align_jax.config import model_config\n\n\n"
        "def get_config(arg=None):\n    return model_config('huge')\n"
    )
    line = error(str(raises))
    assert line.startswith(f"error: {raises}:5: get_config() raised ValueError")
    assert "model preset 'huge' is unknown" in line

    no_arg = tmp_path / "no_arg.py"
    no_arg.write_text("def get_config():\n    return None\n")
    assert "cannot be called with the argument ':x'" in error(f"{no_arg}:x")
    assert "returned NoneType; expected an ml_collections.ConfigDict" in error(str(no_arg))

    not_py = tmp_path / "c.json"
    not_py.write_text("{}")
    assert "is not a Python file" in error(str(not_py))


def test_overrides_apply_in_order_with_their_types(tmp_path):
    argv = [
        f"--config={DPO}:{tmp_path}",
        "--workdir=w",
        "--config.total_steps=7",
        "--config.optimizer.learning_rate",  # the value as the next argument
        "1e-3",
        "--config.objective.wpo",  # a bare bool flag
        "--config.objective.loss_type=ipo",
        "--config.model.rope_scaling.type=none",  # stays the string
        "--config.objective.beta=1",  # an int for a float field
        "--config.total_steps=9",
    ]
    args, cfg = cli.parse_with_config(train.parser(), argv)
    assert args.workdir == "w" and not args.distributed
    assert (cfg.total_steps, cfg.optimizer.learning_rate, cfg.objective.wpo) == (9, 1e-3, True)
    assert cfg.objective.loss_type == "ipo" and cfg.model.rope_scaling.type == "none"
    assert cfg.objective.beta == 1.0 and isinstance(cfg.objective.beta, float)
    assert cfg.data.train_files == f"{tmp_path}/pairs_train.jsonl"
    with pytest.raises(AttributeError):
        cfg.not_a_key = 1  # locked


def test_a_config_package_imports_its_siblings_from_anywhere(tmp_path, monkeypatch):
    """A config file in a package imports the config it derives from by its package name,
    though the package's parent folder is not on sys.path."""
    pkg = tmp_path / "my_runs"
    (pkg / "stage").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stage" / "__init__.py").write_text("")
    (pkg / "stage" / "base.py").write_text(
        "from align_jax.objectives import config_for\n\n\n"
        "def get_config(arg=None):\n    c = config_for('sft')\n"
        "    c.data.train_files = arg or 'default'\n    return c\n"
    )
    (pkg / "stage" / "variant.py").write_text(
        "from my_runs.stage.base import get_config as base\n\n\n"
        "def get_config(arg=None):\n    c = base(arg)\n    c.total_steps = 3\n    return c\n"
    )
    monkeypatch.chdir(REPO)
    assert str(tmp_path) not in sys.path
    cfg = cli.load_config(f"{pkg}/stage/variant.py:d")
    assert (cfg.total_steps, cfg.data.train_files, cfg.objective.name) == (3, "d", "sft")
    assert sys.modules["my_runs.stage.variant"].__file__ == str(pkg / "stage" / "variant.py")


def test_train_cli_from_another_directory_and_from_the_repo(tmp_path):
    """The real entry point: configs/dpo/lora_tiny.py (which imports configs.dpo.tiny) loads
    from outside the repo and from its root; errors are one line, never a traceback."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "align_jax.train", f"--workdir={tmp_path / 'run'}"]
    out = subprocess.run(
        cmd + [f"--config={REPO}/configs/dpo/lora_tiny.py", "--config.objective.betaa=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "did you mean objective.beta?" in out.stderr
    out = subprocess.run(
        cmd + [f"--config=configs/dpo/lora_tiny.py:{tmp_path / 'nodata'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert last.startswith("error: ") and f"{tmp_path / 'nodata'}/tok.model" in last


def test_other_command_lines_report_one_line(tmp_path, capsys):
    code, line = run_main(generate.main, [], capsys)
    assert code == 2 and "required: --workdir" in line and "align_jax.generate --help" in line
    code, line = run_main(generate.main, ["--workdir=w", "--n=two"], capsys)
    assert code == 2 and "--n: invalid int value: 'two'" in line
    code, line = run_main(generate.main, ["--workdir=w", f"--input={tmp_path}/none.jsonl"], capsys)
    assert code == 1 and f"{tmp_path}/none.jsonl" in line
    code, line = run_main(score.main, ["--input=x"], capsys)
    assert code == 2 and "required: --workdir" in line
    code, line = run_main(score.main, ["--workdir=w", f"--input={tmp_path}/none.jsonl"], capsys)
    assert code == 1 and "none.jsonl" in line
    code, line = run_main(hf.main, ["export", "run_dir"], capsys)
    assert code == 2 and "required: hf_dir" in line
    code, line = run_main(hf.main, ["convert"], capsys)
    assert code == 2 and "invalid choice: 'convert'" in line


def test_tools_report_one_line(tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import ablate_dpo
        import bench_train
        import train_tokenizer
    finally:
        sys.path.remove(os.path.join(REPO, "tools"))
    code, line = run_main(ablate_dpo.main, [f"--config={DPO}", "--workdir=w"], capsys)
    assert code == 2 and "required: --loss_types" in line
    argv = [f"--config={DPO}", "--workdir=w", "--loss_types=ipo", "--set=objective.bta=1"]
    code, line = run_main(ablate_dpo.main, argv, capsys)
    assert code == 2 and "--set objective.bta: unknown config key" in line
    assert "did you mean objective.beta?" in line
    assert not os.path.exists("w")  # nothing ran
    code, line = run_main(bench_train.main, ["--configs=tiny,huge"], capsys)
    assert code == 2 and "--configs: unknown ['huge']" in line
    code, line = run_main(train_tokenizer.main, ["--input=x"], capsys)
    assert code == 2 and "required: --model_prefix, --vocab_size" in line
