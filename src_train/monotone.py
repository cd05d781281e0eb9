"""One prognosis model over every horizon whose risks make clinical sense by construction.

``P(dysfunction by horizon h | x) = sigmoid(alpha_h + z . beta)`` with ``z`` the standardised features
(missing values replaced by the training mean, as scikit-learn's ``SimpleImputer`` + ``StandardScaler``
do). All horizons share ``beta``; the intercepts are ordered (``alpha_2y <= alpha_3y <= alpha_4y``), so the
2-year risk never exceeds the 3-year risk, for any input. A clinical value's coefficient is bounded to
the sign medicine expects (:data:`napari_medimp.core.prognosis.CLINICAL_RISK_SIGNS`): a lower GFR, a higher
creatinine, more creatinine variability or an older donor never lowers a risk. This is a cumulative
(ordinal) logistic model on outcomes "by year h"; each reading contributes one term per horizon whose
outcome is known.

Fitted by L-BFGS-B (scipy) on the weighted log-likelihood with an L2 penalty on ``beta`` in the
convention of scikit-learn's ``LogisticRegression`` (``0.5 |beta|^2 + C * sum of losses``); intercepts
are not penalised. The result converts exactly into one :class:`~napari_medimp.core.checkpoint.PrognosisHead`
per horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

#: bound on the intercepts, so that a horizon whose training outcomes are all one class stays finite
INTERCEPT_LIMIT = 30.0


@dataclass
class CumulativeLogit:
    """A fitted model: imputation means, standard deviations, shared coefficients (standardised scale)
    and one intercept per horizon, in the order the outcome columns were given."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercepts: np.ndarray
    converged: bool = True

    def standardise(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef.size:
            raise ValueError(f"expected an (n, {self.coef.size}) feature array, got shape {x.shape}")
        return (np.where(np.isnan(x), self.mean, x) - self.mean) / self.scale

    def decision(self, x: np.ndarray) -> np.ndarray:
        """(n, horizons) log-odds."""
        return (self.standardise(x) @ self.coef)[:, None] + self.intercepts[None, :]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, horizons) risks, non-decreasing along the horizons."""
        return expit(self.decision(x))


def _standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    known = ~np.isnan(x)
    count = known.sum(axis=0)
    mean = np.where(count > 0, np.nansum(x, axis=0) / np.maximum(count, 1), 0.0)
    filled = np.where(known, x, mean)
    scale = filled.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def fit_cumulative_logit(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None,
                         signs: np.ndarray | None = None, C: float = 1.0, max_iter: int = 5000) -> CumulativeLogit:
    """Fit on ``x`` (n, features; NaN = missing) and ``y`` (n, horizons; 1, 0 or NaN = unknown), horizons
    in increasing order of time. ``weights`` per row (default 1); ``signs`` per feature: +1 coefficient
    >= 0, -1 coefficient <= 0, 0 free."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x (n, features) and y (n, horizons) must have the same rows; got {x.shape} and {y.shape}")
    if not C > 0:
        raise ValueError(f"C must be positive, got {C}")
    n, d = x.shape
    h = y.shape[1]
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64).ravel()
    signs = np.zeros(d, np.int8) if signs is None else np.asarray(signs).ravel()
    if w.shape != (n,) or signs.shape != (d,):
        raise ValueError(f"weights need {n} values and signs {d}")
    known = ~np.isnan(y)
    if not known.any():
        raise ValueError("no known outcome to fit on")
    target = np.where(known, y, 0.0)
    mean, scale = _standardisation(x)
    z = (np.where(np.isnan(x), mean, x) - mean) / scale
    cw = C * w[:, None] * known  # (n, h)

    def unpack(theta):
        beta, first, steps = theta[:d], theta[d], theta[d + 1:]
        return beta, first + np.concatenate([[0.0], np.cumsum(steps)])

    def objective(theta):
        beta, alpha = unpack(theta)
        s = (z @ beta)[:, None] + alpha[None, :]
        loss = -(target * log_expit(s) + (1 - target) * log_expit(-s))
        r = cw * (expit(s) - target)
        grad_alpha = r.sum(axis=0)
        grad = np.concatenate([z.T @ r.sum(axis=1) + beta, [grad_alpha.sum()],
                               np.cumsum(grad_alpha[::-1])[::-1][1:]])
        return float((cw * loss).sum() + 0.5 * beta @ beta), grad

    bounds = [(0.0, None) if s > 0 else (None, 0.0) if s < 0 else (None, None) for s in signs]
    bounds += [(-INTERCEPT_LIMIT, INTERCEPT_LIMIT)] + [(0.0, 2 * INTERCEPT_LIMIT)] * (h - 1)
    prevalence = np.clip((target * cw).sum() / max(cw.sum(), 1e-12), 1e-3, 1 - 1e-3)
    theta0 = np.zeros(d + h)
    theta0[d] = np.log(prevalence / (1 - prevalence))
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": max_iter, "maxfun": 4 * max_iter})
    beta, alpha = unpack(res.x)
    return CumulativeLogit(mean, scale, beta, np.clip(alpha, -INTERCEPT_LIMIT, INTERCEPT_LIMIT), bool(res.success))
