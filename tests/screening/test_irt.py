"""The 2PL fit and its estimates, on responses drawn from planted item parameters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from llm_evo.screening.estimator import informative_anchors, irt_anchors, random_anchors
from llm_evo.screening.irt import estimate, fit_2pl

N_FIT, N_NEW, N_ITEMS = 30, 200, 100


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    a = np.exp(rng.normal(0, 0.5, N_ITEMS))
    b = rng.normal(0, 1, N_ITEMS)
    theta = rng.normal(0, 1, N_FIT + N_NEW)
    p = 1 / (1 + np.exp(-a * (theta[:, None] - b)))
    y = (rng.random(p.shape) < p).astype(float)
    return a, b, y


def test_fit_recovers_the_planted_difficulties(planted) -> None:
    a, b, y = planted
    params = fit_2pl(y[:N_FIT], np.arange(N_ITEMS))
    assert np.corrcoef(params.b, b)[0, 1] > 0.85
    assert np.corrcoef(params.a, a)[0, 1] > 0.3
    assert np.all(params.a > 0)
    # unscored cells (NaN) are left out, not read as wrong answers
    holes = y[:N_FIT].copy()
    holes[:, :10] = np.nan
    assert fit_2pl(holes, np.arange(N_ITEMS)).b[:10] == pytest.approx(np.zeros(10), abs=0.5)


def test_irt_anchors_estimate_better_than_random_anchors_mean(planted) -> None:
    _, _, y = planted
    params = fit_2pl(y[:N_FIT], np.arange(N_ITEMS))
    full = y[N_FIT:].mean(1)
    anchors = np.array(irt_anchors(params, 12))
    irt = np.array([estimate(params, anchors, y[j, anchors])
                    for j in range(N_FIT, N_FIT + N_NEW)])
    rand = np.array(random_anchors(list(range(N_ITEMS)), 12, seed=1))
    plain = y[N_FIT:, rand].mean(1)
    assert np.abs(irt - full).mean() < np.abs(plain - full).mean()
    assert spearmanr(irt, full)[0] > spearmanr(plain, full)[0]


def test_anchors_are_deterministic_and_inside_the_subset(planted) -> None:
    _, _, y = planted
    ids = np.arange(100, 100 + N_ITEMS)
    params = fit_2pl(y[:N_FIT], ids)
    assert irt_anchors(params, 10) == irt_anchors(fit_2pl(y[:N_FIT], ids), 10)
    assert set(irt_anchors(params, 10)) <= set(ids.tolist()) and len(irt_anchors(params, 10)) == 10
    assert random_anchors(list(ids), 10, 3) == random_anchors(list(ids), 10, 3)
    assert irt_anchors(params, 500) == sorted(ids.tolist())


@pytest.fixture(scope="module")
def near_neighbours():
    """Models like a merge search's candidates: 60 items every model answers alike (40
    right, 20 wrong) and 40 items on which they differ by a planted 2PL ability."""
    rng = np.random.default_rng(1)
    a, b = np.exp(rng.normal(0, 0.5, 40)), rng.normal(0, 1, 40)
    theta = rng.normal(0, 1, N_FIT + N_NEW)
    p = 1 / (1 + np.exp(-a * (theta[:, None] - b)))
    varying = (rng.random(p.shape) < p).astype(float)
    fixed = np.tile(np.r_[np.ones(40), np.zeros(20)], (N_FIT + N_NEW, 1))
    order = rng.permutation(N_ITEMS)  # the varying items scattered among the others
    y = np.c_[fixed, varying][:, order]
    return y, set(np.flatnonzero(order >= 60).tolist())


def test_informative_anchors_are_items_the_models_differ_on(near_neighbours) -> None:
    y, varying = near_neighbours
    ids = np.arange(N_ITEMS)
    params = fit_2pl(y[:N_FIT], ids)
    picks = informative_anchors(y[:N_FIT], params, 8)
    assert len(picks) == 8 and set(picks) <= varying
    assert picks == informative_anchors(y[:N_FIT], params, 8)  # deterministic
    full = y[N_FIT:].mean(1)

    def ranked(anchors) -> float:
        index = np.array(anchors)
        est = [estimate(params, index, y[j, index]) for j in range(N_FIT, N_FIT + N_NEW)]
        return spearmanr(est, full)[0]

    strata = irt_anchors(params, 8)  # difficulty strata: also spent on settled items
    assert not set(strata) <= varying
    assert ranked(picks) > ranked(strata) + 0.05


def test_informative_anchors_fill_up_when_few_items_vary() -> None:
    y = np.zeros((5, 20))
    y[:, 3] = [1, 0, 1, 0, 1]  # one item varies, the others are settled
    y[:, 10:] = 1
    y[0, 7] = np.nan  # a hole is read as the item's mean, not as wrong
    params = fit_2pl(y, np.arange(20))
    picks = informative_anchors(y, params, 4)
    assert len(picks) == 4 and 3 in picks and len(set(picks)) == 4
    assert informative_anchors(y, params, 20) == list(range(20))
