"""docs/config.md is what tools/config_reference.py writes from the code, so a default or a
comment changed without regenerating the page fails here; every key of every stage's default
config has a description; known keys read as they should; and the comment reader keeps its
rules (trailing comment, else the lines directly above; a line assigning several keys
documents none of them). Nothing here compiles anything."""

import os
import sys
import textwrap

import pytest

from align_jax import objectives
from align_jax.config import base_config
from align_jax.objectives.base import REGISTRY, Registration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import config_reference  # noqa: E402

STALE = "docs/config.md is stale: run `python tools/config_reference.py`"


@pytest.fixture(scope="module")
def ref():
    return config_reference.reference()


@pytest.fixture(scope="module")
def page(ref):
    return config_reference.render(ref)


def section(page: str, title: str) -> str:
    """The text of the `### title` section."""
    start = page.index(f"\n### {title}\n")
    end = page.find("\n### ", start + 1)
    return page[start : end if end >= 0 else len(page)]


def test_page_is_up_to_date(page):
    try:
        with open(config_reference.OUT, encoding="utf-8") as f:
            written = f.read()
    except FileNotFoundError:
        written = None
    if written != page:
        pytest.fail(STALE, pytrace=False)


def test_every_key_of_every_stage_is_described(ref):
    assert config_reference.undocumented(ref) == []
    for name in objectives.names():
        obj = ref["objectives"][name]
        shown = set(ref["shared"]) | set(obj["keys"])
        shown |= {key for keys in obj["sections"].values() for key in keys}
        assert set(config_reference.flatten(objectives.config_for(name))) == shown, name
        for keys in (ref["shared"], obj["keys"], *obj["sections"].values()):
            assert all(description.strip() for _, description in keys.values())


def test_known_keys(page):
    assert "| `data.seq_len` | `512` | tokens per row |" in page
    beta = objectives.defaults("dpo").beta
    dpo = section(page, "dpo")
    assert f"| `objective.beta` | `{beta!r}` | β: implicit reward β·(log π − log π_ref)" in dpo
    assert "| `objective.precompute_ref_logps` | `False` | Reference log-probs" in dpo
    grpo = section(page, "grpo")
    assert "| `objective.beta` | `0.0` | k3 KL to the reference in the loss" in grpo
    assert "| `objective.num_generations` | `8` | G completions per prompt |" in grpo
    # Pipes in descriptions are escaped, so a table cell stays one cell.
    assert '| `optimizer.name` | `"adamw"` | adamw \\| sgd \\| adafactor \\| lion |' in page
    assert '| `model.attention` | `"xla"` | Attention kernel' in page
    assert "| `rollout.max_new_tokens` | `32` |" in section(page, "rollout")
    assert '| `rewards.reward_model` | `""` |' in section(page, "rewards")
    assert "| `llama3_8b` |" in section(page, "Model")  # the presets
    # The shared keys once, not per objective.
    assert page.count("| `data.seq_len` |") == 1


SOURCE = """
import ml_collections


def build():
    c = ml_collections.ConfigDict()
    c.a = 1  # trailing comment
    # Above, on two
    # lines.
    c.b = 2
    # Separated by a blank line: not b's.

    c.c = 3  # fmt: skip
    c.pair = ml_collections.ConfigDict({"x": 1, "y": 2})  # which key?
    c.sub = ml_collections.ConfigDict(
        {
            "r": 3,  # r's
            **more(),
        }
    )
    c.sub.update(t=5)  # t's
    return c


def more():
    return {"s": 4}  # s's
"""


def test_comment_rules(tmp_path, monkeypatch):
    (tmp_path / "cfg_reference_sample.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import cfg_reference_sample

    monkeypatch.setattr(config_reference, "FOLLOW", ("align_jax", "cfg_reference_sample"))
    found = config_reference.descriptions(cfg_reference_sample.build, ("top",))
    assert found == {
        ("top", "a"): "trailing comment",
        ("top", "b"): "Above, on two lines.",
        ("top", "c"): "",  # a pragma is no description, nor is a comment a blank line away
        ("top", "pair"): "",  # several keys on one line: none of them documented
        ("top", "pair", "x"): "",
        ("top", "pair", "y"): "",
        ("top", "sub"): "",
        ("top", "sub", "r"): "r's",
        ("top", "sub", "s"): "s's",  # followed into the function that builds it
        ("top", "sub", "t"): "t's",
    }
    sentence = "Word " * 9 + "end."  # 49 characters
    long = " ".join([sentence] * 6)
    assert config_reference._shorten(long) == " ".join([sentence] * 4)  # up to 200 characters
    assert config_reference._shorten(long.replace(".", ",")) == long.replace(".", ",")  # one


def _fake_data():
    d = base_config().data
    d.seq_len = 1024  # longer rows for this objective
    return d


def _fake_sections():
    return {"data": _fake_data()}


def test_a_changed_shared_default_is_shown(monkeypatch):
    monkeypatch.setattr(config_reference, "FOLLOW", ("align_jax", __name__))
    pretrain = REGISTRY["pretrain"]
    fake = Registration(pretrain.builder, None, pretrain.defaults, _fake_sections)
    monkeypatch.setitem(REGISTRY, "zz_fake", fake)
    ref = config_reference.reference()
    assert ref["objectives"]["zz_fake"]["changed"] == {
        ("data", "seq_len"): (1024, 512, "longer rows for this objective")
    }
    assert ref["objectives"]["zz_fake"]["sections"] == {}
    text = section(config_reference.render(ref), "zz_fake")
    assert "| `data.seq_len` | `1024` | `512` | longer rows for this objective |" in text
