"""Listwise, KTO and reference-free objectives against per-row scoring and numpy formulas;
listwise with K = 2 equals DPO; the listwise and unpaired pipelines' validation and counts."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from align_jax import objectives, parallel
from align_jax.config import DEFAULT_RULES, base_config, model_config
from align_jax.data import listwise, unpaired
from align_jax.data.sources import DataError
from align_jax.data.tokenizer import train_tokenizer
from align_jax.losses import kto_reference_point, token_logprobs
from align_jax.models import abstract_params, apply_model, init_params, param_shardings
from align_jax.objectives.kto import mismatched_rows

L = 16  # row length of every test batch
BETA = 0.5


def config(name, loss_type, **objective):
    cfg = objectives.config_for(name)
    cfg.objective.loss_type = loss_type
    if "beta" in cfg.objective:  # ORPO has none
        cfg.objective.beta = BETA
    cfg.objective.update(objective)
    cfg.model = model_config("tiny", vocab_size=64, d_model=32, head_dim=8, mlp_dim=64)
    return cfg


@pytest.fixture(scope="module")
def models():
    """(graphdef, policy, reference) on one device, and a jitted per-row scorer."""
    cfg = config("dpo", "sigmoid")
    one = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    graphdef, policy, _ = init_params(cfg.model, one, DEFAULT_RULES, 0)

    @jax.jit
    def perturbed(params):  # a second model from the first: one init compile instead of two
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        noisy = [
            x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
            for x, k in zip(leaves, keys, strict=True)
        ]
        return jax.tree.unflatten(treedef, noisy)

    reference = perturbed(policy)
    logits_fn = jax.jit(lambda p, t: apply_model(graphdef, p, t))

    def score(params, ids, mask):
        """Summed log-probs of `ids` (a list) where `mask` is 1, one row alone: padded on the
        right with no segment ids (causal attention keeps the real positions exact)."""
        ids, mask = np.asarray(ids)[:L], np.asarray(mask, np.float32)[:L]
        row = np.zeros(L, np.int32)
        row[: len(ids)] = ids
        lp = np.asarray(token_logprobs(logits_fn(params, row[None, :-1]), row[None, 1:]))[0]
        return float(np.sum(lp[: len(ids) - 1] * mask[1:]))

    return graphdef, policy, reference, score


def sequences(rng, n, prompt=None):
    """n (ids, mask) examples: bos + prompt (shared if given) + completion + eos."""
    prompt = prompt if prompt is not None else list(rng.integers(3, 64, rng.integers(1, 4)))
    out = []
    for _ in range(n):
        completion = list(rng.integers(3, 64, rng.integers(2, 8))) + [2]  # 2: eos
        ids = [1] + prompt + completion
        out.append((ids, [0] * (1 + len(prompt)) + [1] * len(completion)))
    return prompt, out


def rows(examples):
    tokens = np.zeros((len(examples), L), np.int32)
    mask = np.zeros((len(examples), L), np.float32)
    seg = np.zeros((len(examples), L), np.int32)
    for i, (ids, m) in enumerate(examples):
        n = min(len(ids), L)
        tokens[i, :n], mask[i, :n], seg[i, :n] = ids[:n], m[:n], 1
    return tokens, mask, seg


def list_batch(rng, b=4, k=3, lengths=(3, 2, 3, 3)):
    """Lists of real length `lengths[i]` (padded to k), ranked best first."""
    examples, list_mask, scores = [], np.zeros((b, k), np.float32), np.zeros((b, k), np.float32)
    for i in range(b):
        _, seqs = sequences(rng, lengths[i])
        examples += seqs + [([], [])] * (k - lengths[i])
        list_mask[i, : lengths[i]] = 1
        scores[i, : lengths[i]] = np.sort(rng.normal(0, 1, lengths[i]))[::-1]
    tokens, mask, seg = rows(examples)
    ranks = np.where(list_mask > 0, np.arange(1, k + 1)[None], 0).astype(np.int32)
    ranks[0, 1] = 1  # a tie: the pair (0, 1) of list 0 carries no order
    return {
        "tokens": tokens.reshape(b, k, L),
        "mask": mask.reshape(b, k, L),
        "segment_ids": seg.reshape(b, k, L),
        "list_mask": list_mask,
        "ranks": ranks,
        "scores": scores,
        "valid": np.ones(b, np.float32),
        "index": np.arange(b, dtype=np.int32),
    }, examples


def per_row(score, params, examples, shape):
    return np.array([score(params, ids, m) if ids else 0.0 for ids, m in examples]).reshape(shape)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def test_listwise_losses_match_independent_computation(models):
    graphdef, policy, reference, score = models
    batch, examples = list_batch(np.random.default_rng(0))
    lp = per_row(score, policy, examples, (4, 3))
    ref = per_row(score, reference, examples, (4, 3))
    u = BETA * (lp - ref)
    n_real = batch["list_mask"].sum(1).astype(int)

    objective = objectives.build(config("listwise", "plackett_luce"), graphdef)
    loss, (count, metrics) = jax.jit(objective.loss_fn)(
        policy, {"reference": reference}, batch, None
    )
    want = sum(
        -sum(u[i, j] - np.logaddexp.reduce(u[i, j : n_real[i]]) for j in range(n_real[i]))
        for i in range(4)
    )
    assert float(count) == 4
    assert float(loss) == pytest.approx(want, rel=1e-4)
    pairs = [(i, a, c) for i in range(4) for a in range(n_real[i]) for c in range(a + 1, n_real[i])]
    pairs = [p for p in pairs if p[:3] != (0, 0, 1)]  # the tie
    correct = sum(u[i, a] > u[i, c] for i, a, c in pairs)
    assert tuple(float(x) for x in metrics["ranking_accuracy"]) == (correct, len(pairs))
    worst = np.array([u[i, n_real[i] - 1] for i in range(4)])
    assert float(metrics["worst_reward"][0]) == pytest.approx(worst.sum(), rel=1e-4, abs=1e-5)
    assert float(metrics["kl_ref"][0]) > 0
    # The reference always runs in the step: there is nothing to precompute.
    assert objective.needs_reference and objective.reference_logps_fn is None

    tau = 0.7
    objective = objectives.build(config("listwise", "soft_pairwise", score_tau=tau), graphdef)
    loss = float(jax.jit(objective.loss_fn)(policy, {"reference": reference}, batch, None)[0])
    want = 0.0
    for i in range(4):
        s = batch["scores"][i]
        terms = []
        for a in range(n_real[i]):
            for c in range(a + 1, n_real[i]):
                q, z = 1 / (1 + np.exp(-(s[a] - s[c]) / tau)), u[i, a] - u[i, c]
                terms.append(-q * log_sigmoid(z) - (1 - q) * log_sigmoid(-z))
        want += np.mean(terms)
    assert loss == pytest.approx(want, rel=1e-4)


def test_listwise_with_two_responses_equals_dpo(models):
    graphdef, policy, reference, _ = models
    rng = np.random.default_rng(1)
    chosen, rejected = [], []
    for _ in range(6):
        _, (c, r) = sequences(rng, 2)
        chosen.append(c)
        rejected.append(r)
    pair = {}
    for side, examples in (("chosen", chosen), ("rejected", rejected)):
        t, m, s = rows(examples)
        pair.update({f"{side}_tokens": t, f"{side}_mask": m, f"{side}_segment_ids": s})
    scores = rng.normal(0, 1, (6, 2)).astype(np.float32)
    tau = 0.5
    pair.update(
        margin=np.zeros(6, np.float32),
        label=(1 / (1 + np.exp(-(scores[:, 0] - scores[:, 1]) / tau))).astype(np.float32),
        valid=np.ones(6, np.float32),
        index=np.arange(6, dtype=np.int32),
    )
    lists = {
        k: np.stack([pair[f"chosen_{k}"], pair[f"rejected_{k}"]], axis=1)
        for k in ("tokens", "mask", "segment_ids")
    }
    lists.update(
        list_mask=np.ones((6, 2), np.float32),
        ranks=np.tile(np.array([1, 2], np.int32), (6, 1)),
        scores=scores,
        valid=pair["valid"],
        index=pair["index"],
    )
    run = lambda cfg, batch: jax.jit(objectives.build(cfg, graphdef).loss_fn)(  # noqa: E731
        policy, {"reference": reference}, batch, None
    )
    pl, (_, pl_metrics) = run(config("listwise", "plackett_luce"), lists)
    dpo, (_, dpo_metrics) = run(config("dpo", "sigmoid"), pair)
    assert float(pl) == pytest.approx(float(dpo), rel=1e-5)
    assert float(pl_metrics["reward_margin"][0]) == pytest.approx(
        float(dpo_metrics["reward_margin"][0]), rel=1e-4, abs=1e-6
    )
    # Scores give soft labels: K = 2 soft_pairwise is soft-label DPO with q = σ((s1 − s2)/τ).
    soft = run(config("listwise", "soft_pairwise", score_tau=tau), lists)[0]
    soft_dpo = run(config("dpo", "sigmoid", soft_labels=True), pair)[0]
    assert float(soft) == pytest.approx(float(soft_dpo), rel=1e-5)


def unpaired_batch(rng, b=6):
    examples = [sequences(rng, 1)[1][0] for _ in range(b)]
    tokens, mask, seg = rows(examples)
    return {
        "tokens": tokens,
        "mask": mask,
        "segment_ids": seg,
        "label": np.array([1, 0, 1, 1, 0, 0][:b], np.float32),
        "valid": np.ones(b, np.float32),
        "index": np.arange(b, dtype=np.int32),
    }, examples


def test_mismatched_rows_pair_each_prompt_with_the_previous_completion():
    rng = np.random.default_rng(2)
    batch, examples = unpaired_batch(rng)
    # An over-long example: the rows keep what fits in L, and so do mismatched rows with it.
    long_ids = [1, 5, 6, 7, 8, 9, 10, 11, 12] + [13] * 9 + [2]
    examples[2] = (long_ids, [0] * 9 + [1] * 10)
    t, m, s = rows(examples)
    batch.update(tokens=t, mask=m, segment_ids=s)
    got = [
        np.asarray(x) for x in mismatched_rows(batch["tokens"], batch["mask"], batch["segment_ids"])
    ]
    want = []
    examples = [(ids[:L], mask[:L]) for ids, mask in examples]  # the rows hold what fits
    for i, (ids, mask) in enumerate(examples):
        prev_ids, prev_mask = examples[i - 1]
        p = mask.index(1)
        completion = [x for x, k in zip(prev_ids, prev_mask, strict=True) if k]
        want.append((ids[:p] + completion, [0] * p + [1] * len(completion)))
    for a, b in zip(got, rows(want), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("swap", [False, True])
def test_kto_loss_matches_independent_computation(models, swap):
    graphdef, policy, reference, score = models
    if swap:  # the other sign of the mismatched-pair drift: z0 clamps at 0 in one of the two
        policy, reference = reference, policy
    batch, examples = unpaired_batch(np.random.default_rng(3))
    lp = per_row(score, policy, examples, (6,))
    ref = per_row(score, reference, examples, (6,))
    mismatched = []
    for i, (ids, mask) in enumerate(examples):
        prev_ids, prev_mask = examples[i - 1]
        p = mask.index(1)
        completion = [x for x, k in zip(prev_ids, prev_mask, strict=True) if k]
        mismatched.append((ids[:p] + completion, [0] * p + [1] * len(completion)))
    drift = per_row(score, policy, mismatched, (6,)) - per_row(score, reference, mismatched, (6,))
    z0 = max(np.mean(drift), 0.0)
    rho = lp - ref
    w_d, w_u = 1.0, 1.5
    desirable = batch["label"] > 0
    want = np.where(
        desirable,
        w_d * (1 - 1 / (1 + np.exp(-BETA * (rho - z0)))),
        w_u * (1 - 1 / (1 + np.exp(-BETA * (z0 - rho)))),
    )
    cfg = config("kto", "kto", desirable_weight=w_d, undesirable_weight=w_u)
    loss, (count, metrics) = jax.jit(objectives.build(cfg, graphdef).loss_fn)(
        policy, {"reference": reference}, batch, None
    )
    assert float(count) == 6
    assert float(loss) == pytest.approx(want.sum(), rel=1e-4)
    assert float(metrics["kl"][0]) == pytest.approx(z0, rel=1e-4, abs=1e-5)
    assert float(metrics["kl"][0]) == pytest.approx(
        float(kto_reference_point(jnp.asarray(drift), jnp.zeros(6))), rel=1e-4, abs=1e-5
    )
    assert float(metrics["chosen_reward"][0]) == pytest.approx(
        BETA * rho[desirable].sum(), rel=1e-4
    )
    assert float(metrics["rejected_reward"][1]) == 3

    # APO-zero (unpaired): z0 = 0, and the reference log-probs may come precomputed.
    cfg = config("kto", "apo_zero_unpaired", precompute_ref_logps=True)
    objective = objectives.build(cfg, graphdef)
    ref_logps, _ = jax.jit(objective.reference_logps_fn)(reference, batch)
    np.testing.assert_allclose(ref_logps, ref, rtol=1e-4, atol=1e-4)
    pre = dict(batch, ref_logps=np.asarray(ref_logps))
    loss = jax.jit(objective.loss_fn)(policy, None, pre, None)[0]
    s = 1 / (1 + np.exp(-BETA * rho))
    assert float(loss) == pytest.approx(np.where(desirable, 1 - s, s).sum(), rel=1e-4)


def test_kto_sharded_equals_single_device(models, devices):
    graphdef, policy, reference, _ = models
    cfg = config("kto", "kto")
    objective = objectives.build(cfg, graphdef)
    batch, _ = unpaired_batch(np.random.default_rng(4), b=8)
    batch["label"] = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
    batch["valid"][-1] = 0  # as eval pads: the last example and its mismatched pair drop out
    out = []
    _, shapes, axes = abstract_params(cfg.model)
    for shape in ({"data": 1, "fsdp": 1, "tensor": 1}, {"data": 2, "fsdp": 4, "tensor": 1}):
        mesh = parallel.make_mesh(shape, devices[: np.prod(list(shape.values()))])
        shardings = param_shardings(shapes, axes, mesh, DEFAULT_RULES)
        # Rows sharded over 8 devices: the roll that builds mismatched pairs crosses shards.
        rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
        with parallel.sharding_context(mesh, DEFAULT_RULES):
            loss, (count, metrics) = jax.jit(objective.loss_fn)(
                jax.device_put(policy, shardings),
                {"reference": jax.device_put(reference, shardings)},
                jax.device_put(batch, rows),
                None,
            )
        out.append((float(loss), float(count), float(metrics["kl"][0])))
    assert out[0][1] == 7 and out[0][2] > 0
    np.testing.assert_allclose(out[1], out[0], rtol=1e-4)


def test_reference_free_losses_match_independent_computation(models):
    graphdef, policy, _, score = models
    rng = np.random.default_rng(5)
    pair, sides = {}, {"chosen": [], "rejected": []}
    for _ in range(5):
        _, (c, r) = sequences(rng, 2)
        sides["chosen"].append(c)
        sides["rejected"].append(r)
    for side, examples in sides.items():
        t, m, s = rows(examples)
        pair.update({f"{side}_tokens": t, f"{side}_mask": m, f"{side}_segment_ids": s})
    pair.update(valid=np.array([1, 1, 1, 1, 0], np.float32), index=np.arange(5, dtype=np.int32))
    pair["margin"] = pair["label"] = np.ones(5, np.float32)
    lc = per_row(score, policy, sides["chosen"], (5,))
    lr = per_row(score, policy, sides["rejected"], (5,))
    nc = np.array([sum(m) for _, m in sides["chosen"]], np.float32)
    nr = np.array([sum(m) for _, m in sides["rejected"]], np.float32)
    nll = -lc / nc
    valid = pair["valid"]

    def log1m_exp(x):
        return np.log(-np.expm1(x))

    cases = {
        "simpo": (
            dict(beta=2.0, simpo_gamma=0.7),
            -log_sigmoid(2.0 * (lc / nc - lr / nr) - 0.7),
            2.0 * lc / nc,
        ),
        "cpo": (dict(beta=0.2, cpo_alpha=0.5), -log_sigmoid(0.2 * (lc - lr)) + 0.5 * nll, 0.2 * lc),
        "orpo": (
            dict(orpo_lambda=0.3),
            nll
            - 0.3 * log_sigmoid((lc / nc - lr / nr) - (log1m_exp(lc / nc) - log1m_exp(lr / nr))),
            0.3 * lc / nc,
        ),
    }
    for name, (options, want, chosen_reward) in cases.items():
        objective = objectives.build(config(name, name, **options), graphdef)
        assert not objective.needs_reference
        loss, (count, metrics) = jax.jit(objective.loss_fn)(policy, None, pair, None)
        assert float(count) == 4, name
        assert float(loss) == pytest.approx(np.sum(want * valid), rel=1e-4), name
        assert float(metrics["chosen_reward"][0]) == pytest.approx(
            np.sum(chosen_reward * valid), rel=1e-4
        ), name
        assert float(metrics["nll"][0]) == pytest.approx(np.sum(nll * valid), rel=1e-4), name


def test_objective_options_are_checked():
    with pytest.raises(ValueError, match=r"loss_type 'pl' is not valid .* \['plackett_luce'"):
        objectives.build(config("listwise", "pl"), None)
    # Listwise has no precompute_ref_logps key (a list has K log-probs, the cache holds 2).
    assert "precompute_ref_logps" not in objectives.defaults("listwise")
    with pytest.raises(ValueError, match=r"not used by it \['precompute_ref_logps'\]"):
        objectives.build(config("listwise", "plackett_luce", precompute_ref_logps=True), None)
    with pytest.raises(ValueError, match="not supported by loss_type 'kto'"):
        objectives.build(config("kto", "kto", precompute_ref_logps=True), None)
    cfg = config("kto", "kto")
    cfg.data.batch_size = 4
    cfg.optimizer.grad_accum_steps = 4
    with pytest.raises(ValueError, match="at least 2 examples per micro-batch"):
        objectives.build(cfg, None)
    with pytest.raises(ValueError, match=r"valid loss types: \['simpo'\]"):
        objectives.build(config("simpo", "sigmoid"), None)


# --- data ----------------------------------------------------------------------------------

WORDS = "the cat sat on a mat and two plus three is five what".split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    rng = np.random.default_rng(0)
    (d / "c.txt").write_text("\n\n".join(" ".join(rng.choice(WORDS, 8)) for _ in range(300)))
    return train_tokenizer([str(d / "c.txt")], str(d / "tok"), 300)


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def data_cfg(path, **kw):
    c = base_config().data
    c.update(train_files=path, eval_files=path, seq_len=24, batch_size=2, shuffle=False)
    c.update(prefetch_batches=0, list_size=3)
    c.update(kw)
    return c


def test_lists_ranked_cut_padded_and_counted(tok, tmp_path):
    records = [
        # ranks: best first after sorting; 4 responses -> the best 3 kept
        {
            "prompt": "what is ",
            "responses": ["two", "five", "three", "a mat"],
            "ranks": [3, 1, 2, 4],
        },
        # scores: higher is better; an empty response is removed; 2 left -> padded
        {"prompt": "the cat ", "responses": ["sat", "", "on a mat"], "scores": [0.5, 9.0, 2.0]},
        {"prompt": "the cat ", "responses": ["sat", "  "], "scores": [1.0, 0.0]},  # skipped
        {"prompt": "a ", "responses": ["cat", "mat", "cat sat"], "scores": [1, 1, 0]},  # a tie
    ]
    path = write(tmp_path / "l.jsonl", records)
    src = listwise.load_source(data_cfg(path), "train", tok)
    stats = src.stats()
    assert len(src) == 3 and stats["skipped_too_few_responses"] == 1
    assert stats["lists_cut"] == 1 and stats["lists_padded"] == 1
    assert stats["empty_responses"] == 1 and stats["records_with_scores"] == 2
    assert not src.scored  # the first record has ranks only: no `scores` field
    batch = next(listwise.make_train_iterator(data_cfg(path), tok, seed=0, source=src))
    assert batch["tokens"].shape == (2, 3, 24) and "scores" not in batch
    text = (
        lambda i, k: tok.decode(  # noqa: E731
            batch["tokens"][i, k][batch["mask"][i, k] > 0][:-1].tolist()
        )
    )
    assert [text(0, k) for k in range(3)] == ["five", "three", "two"]
    assert [text(1, k) for k in range(2)] == ["on a mat", "sat"]
    np.testing.assert_array_equal(batch["list_mask"], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(batch["ranks"], [[1, 2, 3], [1, 2, 0]])
    assert batch["segment_ids"][1, 2].sum() == 0
    ev = list(listwise.make_eval_iterator(data_cfg(path, batch_size=4), tok, source=src))
    assert len(ev) == 1 and ev[0]["valid"].tolist() == [1, 1, 1, 0]
    np.testing.assert_array_equal(ev[0]["ranks"][2], [1, 1, 3])  # tied scores share a rank

    scored = write(tmp_path / "s.jsonl", records[1:])
    src = listwise.load_source(data_cfg(scored), "train", tok)
    batch = next(listwise.make_train_iterator(data_cfg(scored), tok, seed=0, source=src))
    np.testing.assert_allclose(batch["scores"], [[2.0, 0.5, 0.0], [1.0, 1.0, 0.0]])

    long = write(tmp_path / "o.jsonl", [{**records[0], "responses": ["two " * 30] * 4}, records[1]])
    assert listwise.load_source(data_cfg(long), "train", tok).stats()["overlong_truncated"] == 1
    dropped = listwise.load_source(data_cfg(long, overlong="drop"), "train", tok)
    assert dropped.stats()["overlong_dropped"] == 1 and len(dropped) == 1


def test_list_and_unpaired_bad_records(tok, tmp_path):
    cases = {
        '{"prompt": "a", "ranks": [1, 2]}': r"no 'responses' field \(fields: prompt, ranks\)",
        '{"prompt": "a", "responses": "b"}': r"'responses' is a str",
        '{"prompt": "a", "responses": ["b", 3], "ranks": [1, 2]}': r"responses\[1\] is 3",
        '{"prompt": "a", "responses": ["b", "c"]}': r"neither 'ranks' nor 'scores'",
        '{"prompt": "a", "responses": ["b", "c"], "ranks": [1]}': r"'ranks' is \[1\] for 2",
        '{"prompt": "a", "responses": ["b", "c"], "ranks": [1, 0]}': r"ranks\[1\] is 0",
        '{"prompt": "a", "responses": ["b", "c"], "scores": [1, "x"]}': r"scores\[1\] is 'x'",
    }
    for line, pattern in cases.items():
        path = write(
            tmp_path / "b.jsonl", [{"prompt": "a", "responses": ["b", "c"], "ranks": [1, 2]}, line]
        )
        with pytest.raises(DataError, match=r"b.jsonl:2: " + pattern + ".*; expected"):
            listwise.load_source(data_cfg(path), "train", tok)
    with pytest.raises(DataError, match=r"config.data.list_size=1; expected an integer >= 2"):
        listwise.load_source(data_cfg(path, list_size=1), "train", tok)

    cases = {
        '{"prompt": "a", "completion": "b"}': r"no 'label' field",
        '{"prompt": "a", "completion": "b", "label": 0.5}': r"'label' is 0.5",
        '{"prompt": "a", "completion": "b", "label": "yes"}': r"'label' is 'yes'",
        '{"prompt": 1, "completion": "b", "label": true}': r"'prompt' is a int",
    }
    for line, pattern in cases.items():
        path = write(tmp_path / "u.jsonl", [line])
        with pytest.raises(DataError, match=r"u.jsonl:1: " + pattern + ".*; expected"):
            unpaired.load_source(data_cfg(path), "train", tok)
    path = write(
        tmp_path / "u.jsonl",
        [
            {"prompt": "the cat ", "completion": "sat", "label": True},
            {"prompt": "the cat ", "completion": "", "label": True},
            {"prompt": "a ", "completion": "mat", "label": 0},
            {"prompt": "a ", "completion": "cat", "label": 1.0},
        ],
    )
    src = unpaired.load_source(data_cfg(path), "train", tok)
    stats = src.stats()
    assert stats["skipped_empty_completion"] == 1 and len(src) == 3
    assert stats["desirable"] == 2 and stats["undesirable"] == 1
    batch = next(
        unpaired.make_train_iterator(data_cfg(path, batch_size=3), tok, seed=0, source=src)
    )
    np.testing.assert_array_equal(batch["label"], [1, 0, 1])
    assert tok.decode(batch["tokens"][1][batch["mask"][1] > 0][:-1].tolist()) == "mat"
