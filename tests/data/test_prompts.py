"""Prompt data for online RL: token ids against independent encodings (sentencepiece
directly, and the SFT encoding of the same conversation with a reply), pass-through fields,
left truncation, per-epoch shuffling, process shares, exact resume, bad input."""

import json
import shutil

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sentencepiece as spm

from align_jax.config import base_config
from align_jax.data import prompts
from align_jax.data.records import encode_sft
from align_jax.data.sources import DataError
from align_jax.data.tokenizer import Tokenizer, train_tokenizer

WORDS = "the cat sat on a mat and two plus three is five what user assistant system".split()

# ChatML-like without newlines: with a dummy-prefix tokenizer, every piece boundary shows.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}:{{ m.content }}<|im_end|>"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant:{% endif %}"
)

CHATS = [
    [{"role": "user", "content": "what is two plus three"}],
    [
        {"role": "system", "content": "the cat"},
        {"role": "user", "content": "what is two"},
        {"role": "assistant", "content": "two is two"},
        {"role": "user", "content": "and three"},
    ],
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 8)) for _ in range(400)]
    (d / "c.txt").write_text("\n\n".join(lines))
    return train_tokenizer([str(d / "c.txt")], str(d / "tok"), 320)


@pytest.fixture(scope="module")
def prefix_tok(tmp_path_factory):
    """A sentencepiece model with its default dummy prefix (as Llama 2's): every `encode`
    call starts a word, so encoding a text in pieces differs from encoding it whole."""
    d = tmp_path_factory.mktemp("prefix_tok")
    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(WORDS, 8)) + " <|>" for _ in range(400)]
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines),
        model_prefix=str(d / "tok"),
        vocab_size=120,
        model_type="bpe",
        **{"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "minloglevel": 2},
    )
    return Tokenizer.load(str(d / "tok.model"))


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def data_cfg(train, **kw):
    c = base_config().data
    del c["max_prompt_len"]  # re-added untyped below, so kw may give it any type
    c.update(train_files=train, eval_files=train, batch_size=4, shuffle=False)
    c.update({"prefetch_batches": 0, "max_prompt_len": 64, **kw})  # one update: kw may retype
    return c


def numbered(n):
    return [{"prompt": f"the cat {WORDS[i % len(WORDS)]}", "id": i} for i in range(n)]


def eval_prompts(cfg, tok, **kw):
    source = prompts.load_source(cfg, "train", tok)
    return [p for batch in prompts.make_eval_iterator(cfg, tok, source=source, **kw) for p in batch]


def one_line_error(fn, *needles):
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


# --- encoding -----------------------------------------------------------------------------


def test_prompt_ids_text_and_fields(tok, tmp_path):
    records = [
        {"prompt": "what is two plus three", "answer": "5", "tests": ["a", {"b": [1, None]}]},
        {"prompt": "the cat sat", "answer": 7.5, "meta": {"source": "x", "ok": True}},
        {"prompt": " on a mat\n", "empty": None},
    ]
    path = write(tmp_path / "p.jsonl", records)
    for add_bos in (True, False):
        got = eval_prompts(data_cfg(path, add_bos=add_bos), tok)
        assert len(got) == 4 and [p["valid"] for p in got] == [True] * 3 + [False]
        for i, (p, r) in enumerate(zip(got, records, strict=False)):
            want = [tok.bos_id] * add_bos + tok.encode(r["prompt"])
            assert p["prompt_ids"] == want and p["prompt"] == r["prompt"]
            assert p["fields"] == {k: v for k, v in r.items() if k != "prompt"}
            assert p["index"] == i and p["truncated"] is False


def reply_start(tokens, mask):
    """Where the last run of trained tokens starts (the reply SFT would train on)."""
    trained = np.flatnonzero(mask)
    gaps = np.flatnonzero(np.diff(trained) > 1)
    return int(trained[gaps[-1] + 1] if len(gaps) else trained[0])


def check_chats_as_sft(tok, cfg, tmp_path):
    path = write(tmp_path / "c.jsonl", [{"messages": m, "answer": i} for i, m in enumerate(CHATS)])
    cfg.update(train_files=path, max_prompt_len=256)
    got = eval_prompts(cfg, tok)
    for i, messages in enumerate(CHATS):
        # SFT's encoding of the conversation plus a reply, up to the reply's first token.
        reply = {"messages": [*messages, {"role": "assistant", "content": "five"}]}
        tokens, mask = encode_sft(reply, tok, cfg)
        assert got[i]["prompt_ids"] == tokens[: reply_start(tokens, mask)].tolist()
        assert not got[i]["truncated"]
        assert got[i]["fields"] == {"messages": messages, "answer": i}
    return got


@pytest.mark.parametrize("tokenizer", ["tok", "prefix_tok"])
def test_messages_tokenize_as_sft(request, tokenizer, tmp_path):
    tok = request.getfixturevalue(tokenizer)
    got = check_chats_as_sft(tok, data_cfg("x", chat_template="simple"), tmp_path)
    assert got[1]["prompt"] == (
        "<|system|>\nthe cat\n<|user|>\nwhat is two\n<|assistant|>\ntwo is two\n"
        "<|user|>\nand three\n<|assistant|>\n"
    )
    got = check_chats_as_sft(tok, data_cfg("x", chat_template="chatml"), tmp_path)
    assert got[0]["prompt"] == (
        "<|im_start|>user\nwhat is two plus three<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("tokenizer", ["tok", "prefix_tok"])
def test_messages_with_the_checkpoint_template(request, tokenizer, tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(request.getfixturevalue(tokenizer).path, d / "tokenizer.model")
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": TEMPLATE}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    ckpt_tok = Tokenizer.load(str(d))
    # The template writes bos itself.
    cfg = data_cfg("x", chat_template="checkpoint", add_bos=False)
    got = check_chats_as_sft(ckpt_tok, cfg, tmp_path)
    assert got[1]["prompt"] == (
        "<s><|im_start|>system:the cat<|im_end|><|im_start|>user:what is two<|im_end|>"
        "<|im_start|>assistant:two is two<|im_end|><|im_start|>user:and three<|im_end|>"
        "<|im_start|>assistant:"
    )
    ids = got[1]["prompt_ids"]
    assert ids[0] == ckpt_tok.bos_id and ids.count(ckpt_tok.bos_id) == 1


def test_long_prompts_keep_bos_and_their_tail(tok, tmp_path):
    long = "two plus three " * 20 + "is what"
    records = [{"prompt": long}, {"prompt": "the cat"}, {"prompt": "a mat " * 3}]
    path = write(tmp_path / "l.jsonl", records)
    full = [[tok.bos_id] + tok.encode(r["prompt"]) for r in records]
    assert len(full[0]) > 16 >= max(len(full[1]), len(full[2]))

    cfg = data_cfg(path, max_prompt_len=16)
    source = prompts.load_source(cfg, "train", tok)
    stats = source.stats()
    assert stats["overlong_truncated"] == 1 and stats["records_used"] == 3
    lengths = [len(f) for f in full]
    assert stats["prompt_tokens_min"] == min(lengths)
    assert stats["prompt_tokens_max"] == max(lengths)
    assert stats["prompt_tokens_mean"] == round(sum(lengths) / 3, 1)
    got = eval_prompts(cfg, tok)
    assert got[0]["prompt_ids"] == [tok.bos_id] + full[0][-15:]
    assert got[0]["truncated"] is True and got[0]["prompt"] == long
    assert [p["prompt_ids"] for p in got[1:3]] == full[1:] and not got[1]["truncated"]
    # Without bos, the last max_prompt_len tokens.
    got = eval_prompts(data_cfg(path, max_prompt_len=16, add_bos=False), tok)
    assert got[0]["prompt_ids"] == full[0][-16:]

    cfg = data_cfg(path, max_prompt_len=16, overlong="drop")
    source = prompts.load_source(cfg, "train", tok)
    assert len(source) == 2 and source.stats()["overlong_dropped"] == 1
    got = eval_prompts(cfg, tok)
    assert [(p["prompt"], p["index"]) for p in got if p["valid"]] == [
        ("the cat", 0),
        ("a mat " * 3, 1),
    ]


def test_empty_prompts_are_skipped_and_counted(tok, tmp_path):
    records = [
        {"prompt": "  "},
        {"messages": [{"role": "user", "content": ""}]},
        {"prompt": "the cat"},
    ]
    stats = prompts.load_source(data_cfg(write(tmp_path / "e.jsonl", records)), "train", tok)
    stats = stats.stats()
    assert stats["skipped_empty_prompt"] == 2 and stats["records_used"] == 1


# --- iteration ----------------------------------------------------------------------------


def indices(batches):
    return [[p["index"] for p in b] for b in batches]


def take(it, n):
    return [next(it) for _ in range(n)]


def test_shuffle_is_a_permutation_per_epoch_from_the_seed(tok, tmp_path):
    n = 12
    path = write(tmp_path / "s.jsonl", numbered(n))
    cfg = data_cfg(path, shuffle=True)
    source = prompts.load_source(cfg, "train", tok)

    def stream(seed, steps=9, config=cfg):
        it = prompts.make_train_iterator(config, tok, seed=seed, source=source)
        return sum(indices(take(it, steps)), [])

    flat = stream(3)
    epochs = [flat[i : i + n] for i in range(0, len(flat), n)]
    assert len(epochs) == 3 and all(sorted(e) == list(range(n)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3 and epochs[0] != list(range(n))
    # The records follow their indices (fields ride along).
    batch = next(prompts.make_train_iterator(cfg, tok, seed=3, source=source))
    assert [p["fields"]["id"] for p in batch] == flat[:4]
    assert stream(3) == flat and stream(4) != flat
    # Unshuffled: file order, epoch after epoch; num_epochs=2 ends after two.
    assert stream(0, config=data_cfg(path)) == list(range(n)) * 3
    finite = prompts.make_train_iterator(data_cfg(path, num_epochs=2), tok, seed=0, source=source)
    assert sum(indices(finite), []) == list(range(n)) * 2


def test_processes_get_disjoint_shares_of_the_global_batch(tok, tmp_path):
    path = write(tmp_path / "p.jsonl", numbered(10))
    cfg = data_cfg(path, shuffle=True, batch_size=4)
    source = prompts.load_source(cfg, "train", tok)

    def batches(**kw):
        it = prompts.make_train_iterator(cfg, tok, seed=5, source=source, **kw)
        return indices(take(it, 7))  # crosses epoch boundaries (10 records, 4 per step)

    whole = batches(process_index=0, process_count=1)
    shares = [batches(process_index=p, process_count=2) for p in (0, 1)]
    for step, (g, a, b) in enumerate(zip(whole, *shares, strict=True)):
        assert len(a) == len(b) == 2, step
        assert g == a + b, step  # each process holds a contiguous half of the global batch
    one_line_error(
        lambda: prompts.make_train_iterator(
            data_cfg(path, batch_size=3), tok, seed=0, source=source, process_count=2
        ),
        "config.data.batch_size=3",
        "multiple of the process count 2",
    )


def test_eval_is_one_padded_pass_split_between_processes(tok, tmp_path):
    path = write(tmp_path / "e.jsonl", numbered(5))
    cfg = data_cfg(path, batch_size=4)
    source = prompts.load_source(cfg, "train", tok)
    halves = [
        list(prompts.make_eval_iterator(cfg, tok, source=source, process_index=p, process_count=2))
        for p in (0, 1)
    ]
    assert [len(h) for h in halves] == [2, 2]
    assert all(len(b) == 2 for h in halves for b in h)
    got = [a + b for a, b in zip(*halves, strict=True)]
    assert indices(got) == [[0, 1, 2, 3], [4, 4, 4, 4]]
    assert [[p["valid"] for p in b] for b in got] == [[True] * 4, [True, False, False, False]]
    # Every iter() is a fresh pass.
    it = prompts.eval_dataset(cfg, tok, source=source)
    assert indices(it) == indices(it) == [[0, 1, 2, 3], [4, 4, 4, 4]]


@pytest.fixture(scope="module")
def resume_setup(tok, tmp_path_factory):
    path = write(tmp_path_factory.mktemp("r") / "r.jsonl", numbered(10))
    cfg = data_cfg(path, shuffle=True, batch_size=4, prefetch_batches=2, read_threads=1)
    source = prompts.load_source(cfg, "train", tok)
    make = lambda: prompts.make_train_iterator(cfg, tok, seed=11, source=source)  # noqa: E731
    it = make()
    reference = take(it, 16)
    it.close()
    return make, reference


def assert_continues(it, reference, k, n=4):
    for step in range(k, k + n):
        assert next(it) == reference[step], step


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_get_set_state_resumes_exactly(resume_setup, k):
    make, reference = resume_setup
    it = make()
    take(it, k)
    state = json.loads(json.dumps(it.get_state()))  # what grain's Orbax handler writes
    fresh = make()
    fresh.set_state(state)
    assert_continues(fresh, reference, k)
    assert_continues(it, reference, k)  # get_state leaves the original running


def test_orbax_round_trip(resume_setup, tmp_path):
    make, reference = resume_setup
    options = ocp.CheckpointManagerOptions(max_to_keep=4)
    it = make()
    with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as mngr:
        for step in range(8):
            if step in (0, 2, 5):
                mngr.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
            next(it)
        mngr.wait_until_finished()
    with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as mngr:
        assert mngr.all_steps() == [0, 2, 5]
        for step in mngr.all_steps():
            fresh = make()
            args = ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
            assert mngr.restore(step, args=args)["data"] is fresh
            assert_continues(fresh, reference, step)


# --- bad input ----------------------------------------------------------------------------

EXPECTED = "expected a JSON object with a string 'prompt' or a 'messages' list"
TURN = "expected {'role': one of system, user, assistant, 'content': a string}"
BAD_LINES = {
    '{"answer": "5"}': "no 'prompt' or 'messages' field (fields: answer)",
    '{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}': "both 'prompt' and",
    '{"prompt": 3, "answer": "5"}': "'prompt' is a int",
    '{"prompt": ["a"]}': "'prompt' is a list",
    '{"messages": "hi"}': "'messages' is not a non-empty list",
    '{"messages": []}': "'messages' is not a non-empty list",
    '{"messages": [{"role": "user"}]}': "messages[0] is {'role': 'user'}",
    '{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}': (
        "messages[1] is {'role': 'bot'"
    ),
    '{"messages": [{"role": "user", "content": 5}]}': "messages[0] is {'role': 'user', 'conten",
    '{"messages": ["hi"]}': "messages[0] is 'hi'",
    '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}': (
        "messages end with an assistant turn"
    ),
    '{"prompt": "a"': "not valid JSON",
    '["a"]': "got a JSON list",
}


@pytest.mark.parametrize("line", BAD_LINES)
def test_bad_record_is_a_one_line_error_naming_file_and_line(tok, tmp_path, line):
    path = write(tmp_path / "b.jsonl", [{"prompt": "the cat"}, "", line])
    expected = TURN if "messages[" in BAD_LINES[line] else EXPECTED
    msg = one_line_error(
        lambda: prompts.load_source(data_cfg(path), "train", tok), BAD_LINES[line], expected
    )
    assert msg.startswith(f"{path}:3: "), msg


def test_bad_files_and_config(tok, tmp_path):
    load = lambda path, **kw: prompts.load_source(data_cfg(str(path), **kw), "train", tok)  # noqa: E731
    bad = tmp_path / "u.jsonl"
    bad.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    one_line_error(lambda: load(bad), f"{bad}:2: not valid UTF-8 (byte 0xe9", EXPECTED)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(lambda: load(empty), f"{empty}: file is empty")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    one_line_error(lambda: load(blank), f"{blank}: no usable records")
    text = tmp_path / "p.txt"
    text.write_text("the cat\n")
    one_line_error(
        lambda: load(text),
        f"{text}: plain text (by its extension); prompt data is JSONL: expected one JSON object "
        "per line with a string 'prompt' or a 'messages' list",
    )

    good = write(tmp_path / "g.jsonl", [{"messages": CHATS[0]}])
    for value, least in ((1, 2), ("64", 2), (True, 2), (0, 1)):
        one_line_error(
            lambda v=value, bos=least == 2: load(good, max_prompt_len=v, add_bos=bos),
            f"config.data.max_prompt_len={value!r}; expected an integer >= {least}",
        )
    cfg = data_cfg(good)
    del cfg["max_prompt_len"]
    one_line_error(
        lambda: prompts.load_source(cfg, "train", tok), "config.data.max_prompt_len is not set"
    )
    one_line_error(lambda: load(good, chat_template="nope"), "config.data.chat_template='nope'")
    one_line_error(lambda: load(good, chat_template="checkpoint"), "no chat template")
