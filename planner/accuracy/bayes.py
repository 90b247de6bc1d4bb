"""Robust Bayesian linear regression, shrunk towards zero (the calibration corrections).

Model:

    y_i = x_i . w + e_i,        e_i ~ N(0, sigma^2 + m_i^2)       (m_i: known measurement spread of y_i)
    w_j ~ Student-t_nu(0, tau_j),     sigma^2 ~ Scaled-Inv-chi^2(nu0, sigma0^2)

The prior mean is zero: no correction until measurements say otherwise. The Student-t prior (a Gaussian
scale mixture, ``w_j | l_j ~ N(0, l_j)``, ``l_j ~ Inv-Gamma(nu/2, nu tau_j^2 / 2)``; Bishop, *Pattern
Recognition and Machine Learning*, 2006, section 2.3.7) shrinks weak evidence towards zero like a
Gaussian of scale ``tau_j`` but lets consistent evidence move a coefficient far from it (a model far
outside the published data, e.g. a barely trained toy model that quantization does not hurt), where a
Gaussian prior would keep pulling it back. The prior on w does not scale with the noise.

Fitted by the EM fixed point of the scale mixture (Tipping, "Sparse Bayesian learning and the relevance
vector machine", JMLR 2001, with a proper prior on each scale) and a moment update of sigma^2 in which an
observation counts in proportion to the share of its variance that is not measurement noise (as the
priors' ``fit_rule`` does):

    p_i = 1 / (s2 + m_i^2),   Sn = (diag(1/l) + X' P X)^-1,   mn = Sn X' P y
    l_j = (nu tau_j^2 + mn_j^2 + Sn_jj) / (nu + 1)
    s2  = (nu0 sigma0^2 + sum u_i max(r_i^2 + x_i' Sn x_i - m_i^2, 0)) / (nu0 + sum u_i),  u_i = s2 p_i

The predictive distribution of a new observation at ``x`` (no measurement noise) is taken as Student's t
with ``nu0 + sum u_i`` degrees of freedom, location ``x . mn`` and scale ``sqrt(s2 + x' Sn x)``: it narrows
as observations accumulate (Sn shrinks, the t tails thin) and widens away from the observed x (the
leverage term ``x' Sn x``).
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
    scales: np.ndarray | None = None
    """the fitted prior variances l_j of the scale mixture (a warm start for a refit)"""

    def predict(self, x: np.ndarray, noise: bool = True) -> tuple[float, float]:
        """(location, t scale) of the predictive distribution at ``x``; ``noise=False`` leaves out the
        observation noise (the uncertainty of x . w alone)."""
        return float(x @ self.mean), math.sqrt((self.sigma2 if noise else 0.0) + float(x @ self.cov @ x))

    def normal_spread(self, x: np.ndarray) -> float:
        """Log-spread of a normal with the same 80% interval as the predictive t at ``x`` (the accuracy
        model's intervals are ``mu +- Z80 * s``)."""
        return self.predict(x)[1] * t90(self.dof) / Z80


def fit(X: np.ndarray, y: np.ndarray, measurement_var: np.ndarray, prior_sd: np.ndarray, sigma0: float,
        nu0: float = 4.0, prior_dof: float = 2.0, iterations: int = 100, start: Posterior | None = None) -> Posterior:
    """Posterior of the model above for design ``X`` (n x p), targets ``y``, known measurement variances
    ``measurement_var`` (m_i^2), coefficient prior scales ``prior_sd`` (tau, p), prior noise scale ``sigma0``
    worth ``nu0`` observations and prior degrees of freedom ``prior_dof`` (nu; inf = Gaussian prior).
    ``start``: a previous fit of a nearby problem to start the fixed-point iteration from."""
    tau2 = np.asarray(prior_sd, dtype=float) ** 2
    y, m2 = np.asarray(y, dtype=float), np.asarray(measurement_var, dtype=float)
    X = np.asarray(X, dtype=float).reshape(len(y), len(tau2))
    scales, s2 = tau2.copy(), sigma0 ** 2
    if start is not None and start.scales is not None and len(start.scales) == len(tau2):
        scales, s2 = start.scales.copy(), start.sigma2
    for _ in range(iterations):
        p = 1.0 / (s2 + m2)
        cov = np.linalg.inv(np.diag(1.0 / scales) + (X.T * p) @ X)
        mean = cov @ (X.T @ (p * y))
        moved = 0.0
        if math.isfinite(prior_dof):
            new_scales = (prior_dof * tau2 + mean ** 2 + np.diag(cov)) / (prior_dof + 1.0)
            moved = float(np.max(np.abs(new_scales / scales - 1.0)))
            scales = new_scales
        expected = (y - X @ mean) ** 2 + ((X @ cov) * X).sum(axis=1)
        u = s2 * p
        new = (nu0 * sigma0 ** 2 + float(u @ np.maximum(expected - m2, 0.0))) / (nu0 + float(u.sum()))
        moved = max(moved, abs(new / s2 - 1.0))
        s2 = new
        if moved < 1e-4:
            break
    p = 1.0 / (s2 + m2)
    cov = np.linalg.inv(np.diag(1.0 / scales) + (X.T * p) @ X)
    return Posterior(mean=cov @ (X.T @ (p * y)), cov=cov, sigma2=s2, dof=nu0 + float((s2 * p).sum()), n=len(y),
                     scales=scales)
