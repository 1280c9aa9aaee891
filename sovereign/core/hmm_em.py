"""Warm-started Baum-Welch for many diagonal Gaussian HMMs at once.

A regime model refits every symbol's HMM on its rolling window every ``refit_every`` bars,
and symbols that started together refit on the same bar. hmmlearn fits one model per
call, and three quarters of a refit's time there is its Python around the compiled
recursions (checks, a dict of statistics, the monitor), about 5 ms a symbol: on 100
symbols x 10,000 bars that is 40 s of refits, ten times the whole run the speed target
allows. Here the same EM runs for a batch of windows of one length together, each numpy
operation over all of them, and the forward-backward recursions are hmmlearn's compiled
ones called window by window (``hmmlearn._hmmc``, stable through the 0.3 series; the
tests below fit the same windows with hmmlearn itself, so a change there shows).

It is hmmlearn's algorithm, step for step, so that a refit gives the model hmmlearn would
(``tests/core/test_hmm_em.py`` holds it to hmmlearn's parameters): ``GaussianHMM`` with
``covariance_type="diag"``, ``implementation="scaling"``, ``init_params=""`` (the previous
model is the start), ``params="stmc"``, ``tol`` on the gain in log-likelihood, and the
priors the regime model passes (``means_weight``, ``covars_prior``, ``covars_weight=1``,
means prior 0, Dirichlet priors 1). A window whose forward pass underflows (every state's
likelihood 0 at some bar: hmmlearn raises there) is reported as failed and left to the
caller, which fits it alone the hmmlearn way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True, slots=True)
class Priors:
    """The MAP priors of hmmlearn's ``GaussianHMM`` that the regime model sets."""

    means_weight: float
    covars_prior: float
    tol: float = 1e-2


@dataclass(slots=True)
class Models:
    """m diagonal Gaussian HMMs with K states over F features, as stacked arrays."""

    startprob: np.ndarray  # (m, K)
    transmat: np.ndarray  # (m, K, K)
    means: np.ndarray  # (m, K, F)
    variances: np.ndarray  # (m, K, F)


def refit(x: np.ndarray, start: Models, n_iter: int, priors: Priors) -> tuple[Models, np.ndarray]:
    """Baum-Welch on each window of ``x`` (m, T, F), from ``start``, for at most ``n_iter``
    iterations or until a window's log-likelihood gains less than ``priors.tol`` (each
    window stops on its own, as its own hmmlearn fit would). Returns the fitted models and
    which windows fitted (False: the forward pass underflowed)."""
    m = x.shape[0]
    models = Models(*(np.array(a, dtype=float) for a in _fields(start)))
    ok = np.ones(m, dtype=bool)
    live = np.ones(m, dtype=bool)
    last = np.full(m, -np.inf)
    for it in range(n_iter):
        rows = np.flatnonzero(live)
        if rows.size == 0:
            break
        sub = Models(*(a[rows] for a in _fields(models)))
        stats, logprob, failed = _estep(x[rows], sub)
        fitted = _mstep(sub, stats, priors)
        good = ~failed
        for name, value in zip(_NAMES, _fields(fitted), strict=True):
            getattr(models, name)[rows[good]] = value[good]
        ok[rows[failed]] = False
        # hmmlearn's monitor: converged after n_iter iterations, or once the gain is < tol.
        with np.errstate(invalid="ignore"):  # a failed window's -inf; it stops anyway
            converged = (it > 0) & (logprob - last[rows] < priors.tol)
        last[rows] = logprob
        live[rows[failed | converged]] = False
    return models, ok


_NAMES = ("startprob", "transmat", "means", "variances")


def _fields(models: Models) -> tuple[np.ndarray, ...]:
    return tuple(getattr(models, name) for name in _NAMES)


def _estep(x: np.ndarray, p: Models) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The forward-backward pass with scaling for every window: the sufficient statistics,
    each window's log-likelihood and which windows underflowed."""
    from hmmlearn import _hmmc

    m, _, f = x.shape
    # hmmlearn's diagonal log density, then exp without rescaling (its "scaling" path).
    inv = 1.0 / p.variances  # (m, K, F)
    log_b = -0.5 * (
        (f * _LOG_2PI + np.log(p.variances).sum(axis=-1) + (p.means**2 * inv).sum(axis=-1))[
            :, None, :
        ]
        - 2.0 * np.matmul(x, (p.means * inv).transpose(0, 2, 1))
        + np.matmul(x**2, inv.transpose(0, 2, 1))
    )
    with np.errstate(under="ignore"):
        b = np.exp(log_b)  # (m, T, K)
    # The recursions are hmmlearn's own compiled ones, window by window (each is a few
    # dozen microseconds; a loop over bars in numpy costs more than that per bar).
    fwd = np.zeros_like(b)
    bwd = np.zeros_like(b)
    trans = np.zeros_like(p.transmat)
    logprob = np.full(m, -np.inf)
    failed = np.zeros(m, dtype=bool)
    for g in range(m):
        try:
            logprob[g], fwd[g], scaling = _hmmc.forward_scaling(p.startprob[g], p.transmat[g], b[g])
        except ValueError:  # every state's likelihood underflowed at some bar
            failed[g] = True
            continue
        bwd[g] = _hmmc.backward_scaling(p.startprob[g], p.transmat[g], b[g], scaling)
        trans[g] = _hmmc.compute_scaling_xi_sum(fwd[g], p.transmat[g], bwd[g], b[g])
    post = fwd * bwd
    total = post @ np.ones(post.shape[2])  # a sum over 4 states, 3x faster than .sum
    post /= np.where(total > 0, total, 1.0)[:, :, None]
    post_t = post.transpose(0, 2, 1)
    stats = {
        "start": post[:, 0],
        "trans": trans,
        "post": post.sum(axis=1),
        "obs": np.matmul(post_t, x),
        "obs2": np.matmul(post_t, x**2),
    }
    return stats, logprob, failed


def _normalise_rows(a: np.ndarray) -> np.ndarray:
    """hmmlearn's ``normalize`` along the last axis: a row that sums to 0 stays 0."""
    total = a.sum(axis=-1, keepdims=True)
    return a / np.where(total == 0, 1.0, total)


def _mstep(p: Models, stats: dict[str, np.ndarray], priors: Priors) -> Models:
    """hmmlearn's M-step (Dirichlet priors of 1, a means prior of 0, ``covars_weight`` 1);
    a start probability or transition at exactly 0 stays 0, as there."""
    startprob = np.where(p.startprob == 0, 0.0, np.maximum(stats["start"], 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        # hmmlearn divides the start probabilities by their sum unguarded (0 -> NaN).
        startprob = startprob / startprob.sum(axis=-1, keepdims=True)
    transmat = _normalise_rows(np.where(p.transmat == 0, 0.0, np.maximum(stats["trans"], 0.0)))
    denom = stats["post"][:, :, None]
    means = stats["obs"] / (priors.means_weight + denom)
    c_n = (
        priors.means_weight * means**2
        + stats["obs2"]
        - 2.0 * means * stats["obs"]
        + means**2 * denom
    )
    variances = (priors.covars_prior + c_n) / np.maximum(denom, 1e-5)
    return Models(startprob, transmat, means, variances)
