"""The rollout source's host-side pieces: decoding samples, pass@k, sampling seeds."""

import itertools

import numpy as np
import pytest

from align_jax.training.online import decode_completions, pass_at_k, sampling_seed


class WordTokenizer:
    """ids 0..3 are pad, bos, eos, unk; then one id per word."""

    eos_id = 2
    words = ["<pad>", "<s>", "</s>", "<unk>", "two", "plus", "is", "five"]
    vocab_size = len(words)

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids if i > 3)


def test_decode_drops_the_eos_and_ids_past_the_vocabulary():
    out = {
        "tokens": np.array([[4, 5, 4, 2, 0], [4, 6, 9, 7, 7], [0, 0, 0, 0, 0]]),
        "mask": np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]),
    }
    texts, lengths, has_eos = decode_completions(out, WordTokenizer())
    assert texts == ["two plus two", "two is five five", ""]  # id 9: a padded-vocabulary id
    assert lengths.tolist() == [4, 5, 0]
    assert has_eos.tolist() == [True, False, False]


@pytest.mark.parametrize(
    "n,c,k", [(4, 0, 1), (4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 6, 4), (8, 3, 8)]
)
def test_pass_at_k_is_the_chance_that_k_of_n_samples_hold_a_pass(n, c, k):
    # Independently: the fraction of k-subsets of the n samples with at least one pass.
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets))


def test_sampling_seeds_differ_per_step_round_and_stream_and_repeat():
    seeds = {
        (step, r, stream): sampling_seed(0, step, r, stream=stream)
        for step in range(20) for r in range(4) for stream in (0, 1)
    }  # fmt: skip
    assert len(set(seeds.values())) == len(seeds)
    assert sampling_seed(0, 3, 1) == seeds[(3, 1, 0)]
    assert sampling_seed(1, 3, 1) != seeds[(3, 1, 0)]
