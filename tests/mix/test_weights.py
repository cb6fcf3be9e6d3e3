"""Weights by hand (parse_weights) and from losses (softmax(-loss / T))."""

from __future__ import annotations

import math

import pytest

from llm_evo.errors import ConfigError
from llm_evo.mix.weights import parse_weights, softmax_weights


def test_softmax_prefers_the_lower_loss_and_sums_to_one():
    w = softmax_weights([1.0, 3.0, 2.0], temperature=1.0)
    assert math.isclose(sum(w), 1.0)
    assert w[0] > w[2] > w[1]
    # exactly softmax(-loss / T)
    z = sum(math.exp(-x) for x in (1.0, 3.0, 2.0))
    assert math.isclose(w[0], math.exp(-1.0) / z)


def test_temperature_flattens_and_sharpens():
    losses = [1.17, 4.0]
    cold, warm, hot = (softmax_weights(losses, t)[0] for t in (0.5, 5.0, 1e6))
    assert cold > warm > hot
    assert math.isclose(hot, 0.5, abs_tol=1e-5)


def test_softmax_is_stable_for_large_losses():
    w = softmax_weights([1000.0, 1001.0], temperature=0.01)
    assert w[0] == pytest.approx(1.0) and all(math.isfinite(x) for x in w)


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(t):
    with pytest.raises(ConfigError, match="--temperature"):
        softmax_weights([1.0, 2.0], t)


def test_parse_weights():
    assert parse_weights("0.7, 0.3", 2) == (0.7, 0.3)
    assert parse_weights("0.6,0.6", 2, normalize=False) == (0.6, 0.6)


@pytest.mark.parametrize(("text", "n", "needle"), [
    ("0.5,0.5,0.0", 2, "3 weight(s) for 2 model(s)"),
    ("0.6,0.3", 2, "sum to 0.9, not 1"),
    ("0.5,abc", 2, "not a comma-separated list"),
    ("nan,0.5", 2, "finite"),
])
def test_bad_weights(text, n, needle):
    with pytest.raises(ConfigError) as info:
        parse_weights(text, n)
    assert needle in str(info.value)
