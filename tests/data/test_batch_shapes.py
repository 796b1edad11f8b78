"""`batch_shapes` of every offline batch kind: the fields, shapes and dtypes that its train and
eval iterators really yield (every eval batch, the zero-padded last one too), under config
variations and as the second of two processes."""

import json

import numpy as np
import pytest

from align_jax.config import base_config
from align_jax.data import listwise, pairs, pretrain, sft, unpaired
from align_jax.data.sources import DataError
from align_jax.data.tokenizer import Tokenizer

# module -> the tiny_data files of its train and eval splits
FILES = {
    pretrain: ("train.jsonl", "eval.jsonl"),
    sft: ("sft_train.jsonl", "sft_eval.jsonl"),
    pairs: ("pairs_train.jsonl", "pairs_eval.jsonl"),
    listwise: ("lists_train.jsonl", "lists_eval.jsonl"),
    unpaired: ("unpaired_train.jsonl", "unpaired_eval.jsonl"),
}


@pytest.fixture(scope="module")
def tok(tiny_data):
    return Tokenizer.load(str(tiny_data / "tok.model"))


def data_cfg(tiny_data, module, **kw):
    c = base_config().data
    train, eval_ = FILES[module]
    c.update(
        train_files=str(tiny_data / train),
        eval_files=str(tiny_data / eval_),
        tokenizer=str(tiny_data / "tok.model"),
        seq_len=32,
        batch_size=4,
        prefetch_batches=0,
    )
    c.update(kw)
    return c


def specs(shapes) -> dict:
    return {k: (tuple(s.shape), np.dtype(s.dtype)) for k, s in shapes.items()}


def fields(batch) -> dict:
    return {k: (v.shape, v.dtype) for k, v in batch.items()}


def ref_table(source) -> np.ndarray:
    return np.random.default_rng(len(source)).normal(size=(len(source), 2)).astype(np.float32)


def check_iterators(module, cfg, tok, shapes, *, shard=None, with_ref_table=False):
    """The first train batch and every eval batch have exactly `shapes`; returns how many
    eval batches there were."""
    shard = shard or {}
    want = specs(shapes)
    train_src = module.load_source(cfg, "train", tok)
    eval_src = module.load_source(cfg, "eval", tok)
    tables = {
        split: {"ref_table": ref_table(src)} if with_ref_table else {}
        for split, src in (("train", train_src), ("eval", eval_src))
    }
    train_it = module.make_train_iterator(
        cfg, tok, seed=3, source=train_src, **shard, **tables["train"]
    )
    assert fields(next(train_it)) == want
    n = 0
    for batch in module.make_eval_iterator(cfg, tok, source=eval_src, **shard, **tables["eval"]):
        assert fields(batch) == want, f"eval batch {n}"
        n += 1
    assert n > 0
    return n


TWO_PROCESSES = {"process_index": 1, "process_count": 2}


@pytest.mark.parametrize(
    "overrides, shard",
    [
        ({"seq_len": 16, "batch_size": 4}, None),
        ({"seq_len": 32, "batch_size": 8, "prefetch_batches": 2}, TWO_PROCESSES),
    ],
)
def test_pretrain(tiny_data, tok, overrides, shard):
    cfg = data_cfg(tiny_data, pretrain, **overrides)
    count = (shard or {}).get("process_count")
    check_iterators(pretrain, cfg, tok, pretrain.batch_shapes(cfg, count), shard=shard)


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize(
    "overrides, shard",
    [({"seq_len": 24, "batch_size": 4}, None), ({"seq_len": 48, "batch_size": 6}, TWO_PROCESSES)],
)
def test_sft(tiny_data, tok, packing, overrides, shard):
    cfg = data_cfg(tiny_data, sft, packing=packing, **overrides)
    count = (shard or {}).get("process_count")
    check_iterators(sft, cfg, tok, sft.batch_shapes(cfg, count), shard=shard)


@pytest.mark.parametrize("module", [pairs, unpaired])
@pytest.mark.parametrize("with_ref_table", [False, True])
@pytest.mark.parametrize(
    "overrides, shard",
    [({"seq_len": 24, "batch_size": 4}, None), ({"seq_len": 40, "batch_size": 6}, TWO_PROCESSES)],
)
def test_pairs_and_unpaired(tiny_data, tok, module, with_ref_table, overrides, shard):
    cfg = data_cfg(tiny_data, module, **overrides)
    count = (shard or {}).get("process_count")
    shapes = module.batch_shapes(cfg, count, with_ref_table=with_ref_table)
    n_eval = check_iterators(module, cfg, tok, shapes, shard=shard, with_ref_table=with_ref_table)
    # 16 eval records in global batches of 6: the last of 3 is padded with zero rows.
    assert n_eval == -(-16 // cfg.batch_size)


def write_ranked_lists(tiny_data, tmp_path) -> dict:
    """tiny_data's lists with `ranks` in place of `scores`: files whose batches have none."""
    out = {}
    for split in ("train", "eval"):
        records = [json.loads(line) for line in open(tiny_data / f"lists_{split}.jsonl")]
        path = tmp_path / f"ranked_{split}.jsonl"
        with open(path, "w") as f:
            for r in records:
                ranks = [1 + sum(t > s for t in r["scores"]) for s in r["scores"]]
                f.write(json.dumps({**{k: r[k] for k in ("prompt", "responses")}, "ranks": ranks}))
                f.write("\n")
        out[f"{split}_files"] = str(path)
    return out


@pytest.mark.parametrize("scored", [True, False])
@pytest.mark.parametrize(
    "overrides, shard",
    [
        ({"list_size": 4, "seq_len": 24, "batch_size": 4}, None),
        ({"list_size": 2, "seq_len": 32, "batch_size": 6}, TWO_PROCESSES),
    ],
)
def test_listwise(tiny_data, tok, tmp_path, scored, overrides, shard):
    files = {} if scored else write_ranked_lists(tiny_data, tmp_path)
    cfg = data_cfg(tiny_data, listwise, **overrides, **files)
    source = listwise.load_source(cfg, "train", tok)
    # Whether batches carry `scores` is the data's: the source says, batch_shapes follows.
    assert source.scored == scored
    count = (shard or {}).get("process_count")
    shapes = listwise.batch_shapes(cfg, count, scored=source.scored)
    assert ("scores" in shapes) == scored
    check_iterators(listwise, cfg, tok, shapes, shard=shard)


def test_shapes_written_out(tiny_data):
    """One case per layout, spelled out: the local rows are batch_size // process_count."""
    cfg = data_cfg(tiny_data, pretrain, seq_len=16, batch_size=8)
    i32, f32 = np.dtype(np.int32), np.dtype(np.float32)
    lm = {k: ((4, 16), i32) for k in ("inputs", "targets", "segment_ids", "positions")}
    assert specs(pretrain.batch_shapes(cfg, 2)) == {**lm, "loss_mask": ((4, 16), f32)}
    assert specs(sft.batch_shapes(cfg)) == specs(pretrain.batch_shapes(cfg, 1))
    assert specs(unpaired.batch_shapes(cfg, 4, with_ref_table=True)) == {
        "tokens": ((2, 16), i32),
        "mask": ((2, 16), f32),
        "segment_ids": ((2, 16), i32),
        "label": ((2,), f32),
        "valid": ((2,), f32),
        "index": ((2,), i32),
        "ref_logps": ((2,), f32),
    }
    got = specs(pairs.batch_shapes(cfg, with_ref_table=True))
    assert got["rejected_mask"] == ((8, 16), f32)
    assert got["ref_chosen_logps"] == got["margin"] == ((8,), f32)
    assert len(got) == 2 * 3 + 4 + 2
    cfg.list_size = 3
    got = specs(listwise.batch_shapes(cfg, 2, scored=True))
    assert got["tokens"] == ((4, 3, 16), i32)
    assert got["ranks"] == ((4, 3), i32)
    assert got["scores"] == got["list_mask"] == ((4, 3), f32)


@pytest.mark.parametrize(
    "overrides, count, message",
    [
        ({"batch_size": 6}, 4, "config.data.batch_size=6 is the global batch"),
        ({"seq_len": 0}, 1, "config.data.seq_len=0"),
    ],
)
def test_bad_config_is_the_iterators_error(tiny_data, overrides, count, message):
    cfg = data_cfg(tiny_data, unpaired, **overrides)
    for shapes in (pretrain.batch_shapes, sft.batch_shapes, unpaired.batch_shapes):
        with pytest.raises(DataError, match=message):
            shapes(cfg, count)
