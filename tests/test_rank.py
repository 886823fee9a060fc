"""Effective rank (RankMe) against known values: equal spread in k directions gives k."""

import numpy as np
import pytest

from rad_dino_hf.rank import effective_rank


@pytest.mark.parametrize("k", [1, 3, 7])
def test_orthogonal_equal_spread_has_rank_k(k):
    # Rows +e_i and -e_i for i < k: centred, the singular values are k equal numbers, so the entropy is ln k.
    basis = np.eye(12)[:k] * 5.0
    features = np.concatenate([basis, -basis]) + 3.0  # an offset shared by every row must not count
    assert effective_rank(features) == pytest.approx(k, rel=1e-9)


def test_unequal_spread_against_the_formula():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 6)) * np.array([4.0, 2.0, 1.0, 0.5, 0.1, 0.01])
    centred = features - features.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    share = singular / singular.sum()
    expected = np.exp(-(share * np.log(share)).sum())
    assert effective_rank(features) == pytest.approx(expected, rel=1e-9)
    assert 1.0 < effective_rank(features) < 6.0


def test_identical_rows_have_rank_one():
    assert effective_rank(np.tile([1.0, -2.0, 0.5], (10, 1))) == 1.0


def test_rejects_a_vector():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        effective_rank(np.ones(5))
