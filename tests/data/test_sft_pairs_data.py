"""SFT and preference-pair data: loss masks, chat templates, packing, counts, reference
log-probs by record index, bad input (every later stage's plain-text file)."""

import json

import ml_collections
import numpy as np
import pytest

from align_jax.config import base_config
from align_jax.data import listwise, pairs, sft, unpaired
from align_jax.data.records import CHAT_TEMPLATES, encode_sft
from align_jax.data.sources import DataError
from align_jax.data.tokenizer import train_tokenizer

WORDS = "the cat sat on a mat and two plus three is five what user assistant system".split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 8)) for _ in range(400)]
    (d / "c.txt").write_text("\n\n".join(lines))
    return train_tokenizer([str(d / "c.txt")], str(d / "tok"), 320)


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def data_cfg(train, **kw) -> ml_collections.ConfigDict:
    c = base_config().data
    c.update(
        train_files=train,
        eval_files=train,
        seq_len=32,
        batch_size=4,
        shuffle=False,
        prefetch_batches=0,
    )
    c.update(kw)
    return c


def trained_text(tok, batch, row, segment):
    sel = (batch["segment_ids"][row] == segment) & (batch["loss_mask"][row] > 0)
    return tok.decode(batch["targets"][row][sel].tolist())


def test_prompt_tokens_carry_no_loss(tok, tmp_path):
    records = [
        {"prompt": "what is two plus three ", "completion": "five"},
        {"prompt": "the cat sat ", "completion": "on a mat"},
    ]
    cfg = data_cfg(write(tmp_path / "a.jsonl", records * 2), packing=False)
    src = sft.load_source(cfg, "train", tok)
    batch = next(sft.make_train_iterator(cfg, tok, seed=0, source=src))
    for row, r in enumerate(records * 2):
        # Exactly the completion and the closing eos are trained; no prompt token is.
        sel = batch["loss_mask"][row] > 0
        assert tok.decode(batch["targets"][row][sel].tolist()) == r["completion"]
        assert batch["targets"][row][sel][-1] == tok.eos_id
        n_prompt = len(tok.encode(r["prompt"])) + 1  # + bos
        assert batch["loss_mask"][row][: n_prompt - 1].sum() == 0
        assert batch["loss_mask"][row][n_prompt - 1] == 1


def test_chat_loss_on_assistant_turns_only(tok):
    record = {
        "messages": [
            {"role": "system", "content": "the cat"},
            {"role": "user", "content": "what is two"},
            {"role": "assistant", "content": "two is two"},
            {"role": "user", "content": "and three"},
            {"role": "assistant", "content": "three is three"},
        ]
    }
    for template in CHAT_TEMPLATES:
        cfg = data_cfg("x", chat_template=template)
        tokens, mask = encode_sft(record, tok, cfg)
        trained = tok.decode(tokens[mask > 0][:-1].tolist())  # drop the final eos
        suffix = CHAT_TEMPLATES[template]["suffix"]["assistant"]
        assert trained == f"two is two{suffix}three is three{suffix}"
        assert tokens[mask > 0][-1] == tok.eos_id
        full = tok.decode(tokens[1:-1].tolist())
        assert "what is two" in full and "the cat" in full
    with pytest.raises(DataError, match="config.data.chat_template='nope'"):
        encode_sft(record, tok, data_cfg("x", chat_template="nope"))


def test_packing_keeps_examples_apart(tok, tmp_path):
    records = [
        {"prompt": f"the cat {'sat ' * (i % 3)}", "completion": WORDS[i % 10] + " mat"}
        for i in range(40)
    ]
    cfg = data_cfg(write(tmp_path / "p.jsonl", records), packing=True)
    src = sft.load_source(cfg, "train", tok)
    batch = next(sft.make_train_iterator(cfg, tok, seed=0, source=src))
    seg, pos, mask = batch["segment_ids"], batch["positions"], batch["loss_mask"]
    assert seg.max() > 1  # several examples share a row
    completions = {r["completion"] for r in records}
    for row in range(seg.shape[0]):
        for s in set(seg[row].tolist()) - {0}:
            where = np.nonzero(seg[row] == s)[0]
            assert pos[row][where].tolist() == list(range(len(where)))  # restart per example
            text = trained_text(tok, batch, row, s)
            assert text in completions, text  # never a neighbour's tokens
        # The last input of each segment never predicts the next segment's first token.
        boundary = np.nonzero(seg[row][:-1] != seg[row][1:])[0]
        assert mask[row][boundary].sum() == 0


def test_sft_iterator_checkpoint_is_exact(tok, tmp_path):
    records = [
        {"prompt": "the cat ", "completion": " ".join(WORDS[: 1 + i % 9])} for i in range(60)
    ]
    cfg = data_cfg(write(tmp_path / "c.jsonl", records), shuffle=True)
    src = sft.load_source(cfg, "train", tok)
    it = sft.make_train_iterator(cfg, tok, seed=3, source=src)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(3)]
    it2 = sft.make_train_iterator(cfg, tok, seed=3, source=src)
    it2.set_state(state)
    for w in want:
        got = next(it2)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])


def test_overlong_examples_truncated_or_dropped_and_counted(tok, tmp_path):
    records = [
        {"prompt": "the cat ", "completion": "mat " * 40},
        {"prompt": "a ", "completion": "cat"},
    ]
    path = write(tmp_path / "o.jsonl", records)
    src = sft.load_source(data_cfg(path, overlong="truncate"), "train", tok)
    assert src.stats()["overlong_truncated"] == 1 and len(src) == 2
    src = sft.load_source(data_cfg(path, overlong="drop"), "train", tok)
    assert src.stats()["overlong_dropped"] == 1 and len(src) == 1
    with pytest.raises(
        DataError, match="config.data.overlong='cut'; expected 'truncate' or 'drop'"
    ):
        sft.load_source(data_cfg(path, overlong="cut"), "train", tok)


def test_sft_bad_records(tok, tmp_path):
    cases = {
        '{"prompt": "a"}': r"b.jsonl:2: no 'completion' field \(fields: prompt\)",
        '{"messages": [{"role": "bot", "content": "x"}]}': (
            r"b.jsonl:2: messages\[0\] is .*expected"
        ),
        '{"prompt": "a", "completion": 3}': r"b.jsonl:2: 'completion' is a int",
    }
    for line, pattern in cases.items():
        path = write(tmp_path / "b.jsonl", [{"prompt": "a", "completion": "b"}, line])
        with pytest.raises(DataError, match=pattern):
            sft.load_source(data_cfg(path), "train", tok)
    (tmp_path / "u.jsonl").write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"u.jsonl:2: not valid UTF-8"):
        sft.load_source(data_cfg(str(tmp_path / "u.jsonl")), "train", tok)
    path = write(
        tmp_path / "e.jsonl",
        [
            {"prompt": "a", "completion": ""},
            {"messages": [{"role": "user", "content": "hi"}]},
            {"prompt": "a", "completion": "b"},
        ],
    )
    stats = sft.load_source(data_cfg(path), "train", tok).stats()
    assert stats["skipped_empty_completion"] == 1 and stats["skipped_no_assistant_reply"] == 1
    assert stats["records_used"] == 1


def test_pairs_fields_defaults_and_identical_pairs(tok, tmp_path):
    records = [
        {"prompt": "what is two ", "chosen": "two", "rejected": "three", "margin": 1.5},
        {"prompt": "the cat ", "chosen": "sat", "rejected": "sat"},
        {"prompt": "the cat ", "chosen": "on a mat", "rejected": "mat", "label": 0.25},
    ]
    path = write(tmp_path / "p.jsonl", records)
    src = pairs.load_source(data_cfg(path), "train", tok)
    assert src.stats()["identical_pairs"] == 1 and len(src) == 2
    kept = pairs.load_source(data_cfg(path, drop_identical_pairs=False), "train", tok)
    assert kept.stats()["identical_pairs"] == 1 and len(kept) == 3
    cfg = data_cfg(path, batch_size=2)
    batch = next(pairs.make_train_iterator(cfg, tok, seed=0, source=src))
    np.testing.assert_allclose(batch["margin"], [1.5, 0.0])
    np.testing.assert_allclose(batch["label"], [1.0, 0.25])
    for side, texts in (("chosen", ["two", "on a mat"]), ("rejected", ["three", "mat"])):
        toks, mask, seg = (
            batch[f"{side}_tokens"],
            batch[f"{side}_mask"],
            batch[f"{side}_segment_ids"],
        )
        assert toks.shape == (2, 32)
        for row, text in enumerate(texts):
            n = int(seg[row].sum())
            assert toks[row][0] == tok.bos_id and toks[row][n - 1] == tok.eos_id
            assert tok.decode(toks[row][(mask[row] > 0)][:-1].tolist()) == text
    # Eval pads its last global batch with invalid pairs.
    ev = list(pairs.make_eval_iterator(data_cfg(path, batch_size=4), tok, source=src))
    assert len(ev) == 1 and ev[0]["valid"].tolist() == [1, 1, 0, 0]


def test_pairs_bad_records(tok, tmp_path):
    cases = {
        '{"prompt": "a", "chosen": "b"}': r"no 'rejected' field",
        '{"prompt": "a", "chosen": "b", "rejected": "c", "label": 2}': r"'label' is 2; expected",
        '{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "x"}': r"'margin' is 'x'",
    }
    for line, pattern in cases.items():
        path = write(tmp_path / "b.jsonl", [line])
        with pytest.raises(DataError, match=r"b.jsonl:1: " + pattern):
            pairs.load_source(data_cfg(path), "train", tok)
    path = write(
        tmp_path / "e.jsonl",
        [
            {"prompt": "a", "chosen": "", "rejected": "c"},
            {"prompt": "a", "chosen": "b", "rejected": "c"},
        ],
    )
    assert pairs.load_source(data_cfg(path), "train", tok).stats()["skipped_empty_completion"] == 1


def test_reference_table_fields_follow_the_record_index(tok, tmp_path):
    records = [
        {"prompt": "the cat ", "chosen": c, "rejected": r}
        for c, r in (("sat", "mat"), ("two", "five"), ("a", "on a mat"))
    ]
    path = write(tmp_path / "r.jsonl", records)
    table = np.asarray([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]], np.float32)
    cfg = data_cfg(path, batch_size=3, shuffle=True)
    src = pairs.load_source(cfg, "train", tok)
    batch = next(pairs.make_train_iterator(cfg, tok, seed=5, source=src, ref_table=table))
    # Whatever order shuffling brings, each row's chosen text is its file line's.
    chosen = [r["chosen"] for r in records]
    for row in range(3):
        i = int(batch["index"][row])
        sel = batch["chosen_mask"][row] > 0
        assert tok.decode(batch["chosen_tokens"][row][sel][:-1].tolist()) == chosen[i]
        assert batch["ref_chosen_logps"][row] == table[i, 0]
        assert batch["ref_rejected_logps"][row] == table[i, 1]
    assert sorted(batch["index"].tolist()) == [0, 1, 2] != batch["index"].tolist()
    ev = next(
        pairs.make_eval_iterator(data_cfg(path, batch_size=4), tok, source=src, ref_table=table)
    )
    np.testing.assert_array_equal(ev["ref_rejected_logps"], [-2.0, -4.0, -6.0, 0.0])

    path = write(
        tmp_path / "u.jsonl",
        [{"prompt": "a ", "completion": "cat", "label": i % 2 == 0} for i in range(3)],
    )
    src = unpaired.load_source(data_cfg(path), "train", tok)
    ev = next(unpaired.make_eval_iterator(data_cfg(path), tok, source=src, ref_table=table))
    np.testing.assert_array_equal(ev["ref_logps"], [-1.0, -3.0, -5.0, 0.0])
    np.testing.assert_array_equal(ev["index"], [0, 1, 2, 0])


@pytest.mark.parametrize(
    "module, record, fields",
    [
        (sft, {"prompt": "a", "completion": "b"}, "string 'prompt' and 'completion' fields"),
        (pairs, {"prompt": "a", "chosen": "b", "rejected": "c"}, "'chosen' and 'rejected'"),
        (listwise, {"prompt": "a", "responses": ["b", "c"], "ranks": [1, 2]}, "'responses'"),
        (unpaired, {"prompt": "a", "completion": "b", "label": True}, "and a 'label'"),
    ],
)
def test_plain_text_file_is_a_one_line_error(tok, tmp_path, module, record, fields):
    def error(path, **kw):
        with pytest.raises(DataError) as e:
            module.load_source(data_cfg(str(path), **kw), "train", tok)
        msg = str(e.value)
        assert "\n" not in msg and fields in msg, msg
        assert "data is JSONL: expected one JSON object per line with" in msg, msg
        return msg

    text = tmp_path / "train.txt"
    text.write_text("the cat sat\n\non a mat\n")
    assert error(text).startswith(f"{text}: plain text (by its extension); ")
    # A JSONL file read as text is the same error; read as JSONL it loads.
    jsonl = write(tmp_path / "train.jsonl", [record, record])
    assert error(jsonl, format="text").startswith(
        f"{jsonl}: plain text (config.data.format='text')"
    )
    assert len(module.load_source(data_cfg(jsonl), "train", tok)) == 2
