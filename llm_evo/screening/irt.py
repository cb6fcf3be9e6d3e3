"""A two-parameter logistic (2PL) item response model, fitted on the run's own responses.

Test-takers are the models fully scored so far (parents and promoted candidates); items are
one task's scored items. P(item i right | model j) = sigmoid(a_i (theta_j - b_i)), with a
discrimination a_i > 0, a difficulty b_i and an ability theta_j. The fit is joint maximum a
posteriori (standard normal priors on theta and b, log-normal on a) by L-BFGS with exact
gradients: deterministic, a fraction of a second for hundreds of models x items.

Why our own ~100 lines and not a library (issue #17 asked to look): `girth` (last release
2021) fits by marginal maximum likelihood, which integrates ability over a population and
needs hundreds of test-takers; a screened search starts with 2-5 (the parents). `py-irt`
fits by variational inference through Pyro, a heavy dependency for a model this small, and
is built around its own training CLI. A merge search has few test-takers and many items,
which the priors of a joint MAP fit handle; tests/screening/test_irt.py checks the fit
recovers planted parameters and that its estimates beat the anchors' plain mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRIOR_B, PRIOR_LOG_A = 1.5, 0.5  # prior standard deviations of b and log a (theta: 1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


@dataclass(frozen=True)
class ItemParams:
    """Fitted items of one task (`ids`: lm-eval doc ids) and the test-takers' abilities."""

    ids: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray

    def p_right(self, theta: float) -> np.ndarray:
        return _sigmoid(self.a * (theta - self.b))


def fit_2pl(responses: np.ndarray, ids: np.ndarray) -> ItemParams:
    """Fit on `responses` (models x items, values in [0, 1]; NaN: not scored)."""
    from scipy.optimize import minimize

    y = np.asarray(responses, dtype=np.float64)
    seen = ~np.isnan(y)
    y = np.where(seen, y, 0.0)
    n, m = y.shape
    eps = 1e-3
    model_p = np.clip((y * seen).sum(1) / np.maximum(seen.sum(1), 1), eps, 1 - eps)
    item_p = np.clip((y * seen).sum(0) / np.maximum(seen.sum(0), 1), eps, 1 - eps)
    theta0 = np.log(model_p / (1 - model_p))
    theta0 = (theta0 - theta0.mean()) / (theta0.std() + 1e-9) if n > 1 else theta0 * 0
    x0 = np.concatenate([theta0, np.zeros(m), -np.log(item_p / (1 - item_p))])

    def loss(x: np.ndarray) -> tuple[float, np.ndarray]:
        theta, log_a, b = x[:n], x[n:n + m], x[n + m:]
        a = np.exp(log_a)
        diff = theta[:, None] - b[None, :]
        p = np.clip(_sigmoid(a * diff), 1e-12, 1 - 1e-12)
        nll = -np.sum(seen * (y * np.log(p) + (1 - y) * np.log(1 - p)))
        r = seen * (p - y)
        prior = (0.5 * theta @ theta + 0.5 * log_a @ log_a / PRIOR_LOG_A**2
                 + 0.5 * b @ b / PRIOR_B**2)
        grad = np.concatenate([
            (r * a).sum(1) + theta,
            (r * diff * a).sum(0) + log_a / PRIOR_LOG_A**2,
            -(r * a).sum(0) + b / PRIOR_B**2,
        ])
        return float(nll + prior), grad

    res = minimize(loss, x0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    x = res.x
    return ItemParams(np.asarray(ids), np.exp(x[n:n + m]), x[n + m:], x[:n])


def ability(params: ItemParams, index: np.ndarray, y: np.ndarray) -> float:
    """MAP ability of a new model from its responses `y` to the items at `index`, with the
    fitted abilities' spread as the prior (so few anchors shrink toward the known models)."""
    from scipy.optimize import minimize_scalar

    a, b = params.a[index], params.b[index]
    mu = float(params.theta.mean()) if params.theta.size else 0.0
    sd = float(max(params.theta.std(), 0.5)) if params.theta.size > 1 else 1.0
    y = np.asarray(y, dtype=np.float64)

    def nll(theta: float) -> float:
        p = np.clip(_sigmoid(a * (theta - b)), 1e-12, 1 - 1e-12)
        return float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))
                     + 0.5 * ((theta - mu) / sd) ** 2)

    return float(minimize_scalar(nll, bounds=(mu - 6 * sd, mu + 6 * sd),
                                 method="bounded").x)


def estimate(params: ItemParams, index: np.ndarray, y: np.ndarray) -> float:
    """The expected mean over all of `params`' items: the anchors' observed values plus the
    model's predicted probability on every other item (tinyBenchmarks' p-IRT)."""
    theta = ability(params, index, y)
    p = params.p_right(theta)
    p[index] = y
    return float(p.mean())
