"""Bayesian linear regression with unknown noise, shrunk towards zero (the calibration corrections).

Model (Bishop, *Pattern Recognition and Machine Learning*, 2006, sections 3.3 and 10.3; Drugowitsch,
"Variational Bayesian inference for linear and logistic regression", arXiv:1310.5438, 2013):

    y_i = x_i . w + e_i,       e_i ~ N(0, sigma^2 / v_i)       (v_i in (0, 1]: known precision weight)
    w ~ N(0, diag(prior_sd^2)),    sigma^2 ~ Scaled-Inv-chi^2(nu0, sigma0^2)

The prior mean is zero: no correction until measurements say otherwise. The prior on w does not scale
with the noise (unlike the conjugate Normal-Inverse-Gamma prior, where learning that measurements are
precise would also shrink how far an unmeasured setting may sit from the base). The posterior is the
mean-field variational solution q(w) q(sigma^2), iterated to its fixed point:

    Sn = (S0^-1 + X' V X / s2)^-1,    mn = Sn X' V y / s2,
    s2 = (nu0 sigma0^2 + sum v_i (y_i - x_i . mn)^2 + tr(X' V X Sn)) / (nu0 + sum v_i)

(``s2`` = 1 / E[1/sigma^2]; weights count as fractional observations). The predictive distribution of a
new observation at ``x`` (weight 1) is taken as Student's t with ``nu0 + sum v_i`` degrees of freedom,
location ``x . mn`` and scale ``sqrt(s2 + x' Sn x)``: it narrows as observations accumulate (Sn shrinks,
the t tails thin) and widens away from the observed x (the leverage term ``x' Sn x``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from planner.accuracy.priors import Z80, t90


@dataclass(frozen=True)
class Posterior:
    """Posterior of a :func:`fit` (see the module docstring)."""

    mean: np.ndarray
    cov: np.ndarray
    """Sn: posterior covariance of w"""
    sigma2: float
    """s2: the noise variance (1 / E[1/sigma^2])"""
    dof: float
    n: int
    """observations behind the fit"""

    def predict(self, x: np.ndarray, noise: bool = True) -> tuple[float, float]:
        """(location, t scale) of the predictive distribution at ``x``; ``noise=False`` leaves out the
        observation noise (the uncertainty of x . w alone)."""
        return float(x @ self.mean), math.sqrt((self.sigma2 if noise else 0.0) + float(x @ self.cov @ x))

    def normal_spread(self, x: np.ndarray) -> float:
        """Log-spread of a normal with the same 80% interval as the predictive t at ``x`` (the accuracy
        model's intervals are ``mu +- Z80 * s``)."""
        return self.predict(x)[1] * t90(self.dof) / Z80


def fit(X: np.ndarray, y: np.ndarray, weights: np.ndarray, prior_sd: np.ndarray, sigma0: float,
        nu0: float = 4.0, iterations: int = 50) -> Posterior:
    """Posterior of the model above for design ``X`` (n x p), targets ``y``, precision weights ``weights``,
    coefficient prior standard deviations ``prior_sd`` (p), prior noise scale ``sigma0`` worth ``nu0``
    observations."""
    prior_sd = np.asarray(prior_sd, dtype=float)
    precision0 = np.diag(1.0 / prior_sd ** 2)
    y, v = np.asarray(y, dtype=float), np.asarray(weights, dtype=float)
    X = np.asarray(X, dtype=float).reshape(len(y), len(prior_sd))
    XtV = X.T * v
    gram, moment = XtV @ X, XtV @ y
    dof = nu0 + float(v.sum())
    s2 = sigma0 ** 2
    for _ in range(iterations):
        cov = np.linalg.inv(precision0 + gram / s2)
        mean = cov @ moment / s2
        residual = y - X @ mean
        new = (nu0 * sigma0 ** 2 + float(v @ residual ** 2) + float(np.trace(gram @ cov))) / dof
        converged = abs(new - s2) < 1e-10 + 1e-6 * s2
        s2 = new
        if converged:
            break
    cov = np.linalg.inv(precision0 + gram / s2)
    return Posterior(mean=cov @ moment / s2, cov=cov, sigma2=s2, dof=dof, n=len(y))
