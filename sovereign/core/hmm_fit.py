"""Fitting the regime model's HMM (``core.regime.HmmRegimeModel``): hmmlearn's
``GaussianHMM`` one window at a time (``fit_hmm``), or many windows in one batched EM
(``fit_hmms``, ``core.hmm_em``), in the regime model's canonical state order."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from sovereign.core import hmm_em
from sovereign.domain.regimes import REGIME_NAMES

# A light prior keeps a state that no bar visits finite instead of NaN (hmmlearn's MAP
# priors, used by hmmlearn's fits and the batched refits alike).
_PRIORS = hmm_em.Priors(means_weight=1e-2, covars_prior=1e-2)
# hmmlearn logs a warning for every state no bar leaves; the fit handles that itself.
logging.getLogger("hmmlearn").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class HmmParams:
    """A fitted model in canonical state order (state i is regime i)."""

    startprob: np.ndarray  # (K,)
    transmat: np.ndarray  # (K, K)
    means: np.ndarray  # (K, F), standardised space
    variances: np.ndarray  # (K, F), standardised space
    feature_mean: np.ndarray  # (F,)
    feature_std: np.ndarray  # (F,)

    def raw_means(self) -> np.ndarray:
        return self.means * self.feature_std + self.feature_mean


def canonical_order(means: np.ndarray) -> np.ndarray:
    """The permutation that puts fitted states in regime-code order (see above)."""
    lvol, trend = means[:, 1], means[:, 2]
    volatile = int(np.argmax(lvol))
    rest = [i for i in range(len(means)) if i != volatile]
    up = max(rest, key=lambda i: (trend[i], -i))
    rest.remove(up)
    down = min(rest, key=lambda i: (trend[i], i))
    rest.remove(down)
    return np.array([up, down, rest[0], volatile])


def fit_hmm(
    features: np.ndarray, *, seed: int, n_iter: int, previous: HmmParams | None = None
) -> HmmParams:
    """Fit the 4-state HMM to raw features (T, 3); warm-started from ``previous``.

    A fit that degenerates (a state that no bar visits, NaN parameters) is retried from
    a fresh start; if that fails too, the previous model stays in force (ValueError when
    there is none).
    """
    x, mean, std = _standardise(features)
    attempts = [previous, None] if previous is not None else [None, None]
    for attempt, start in enumerate(attempts):
        iterations = warm_iterations(n_iter) if start is not None else n_iter
        model = _fit_once(x, mean, std, seed=seed + attempt, n_iter=iterations, previous=start)
        if model is not None:
            fitted = (model.startprob_, model.transmat_, model.means_, model._covars_)
            return _canonical(*fitted, mean, std)
    if previous is not None:
        return previous
    raise ValueError("the HMM could not be fitted to this window")


def warm_iterations(n_iter: int) -> int:
    """A warm start is already near the optimum: a third of the iterations do."""
    return max(5, n_iter // 3)


def _standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A window in its own standard scale, with the mean and deviation that define it."""
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return (features - mean) / std, mean, std


def _warm_start(
    previous: HmmParams, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The previous states, expressed in a new window's standardised scale: start
    probabilities, transitions, means and variances."""
    raw_means = previous.means * previous.feature_std + previous.feature_mean
    raw_vars = previous.variances * previous.feature_std**2
    return (
        _normalise(previous.startprob + 1e-6),
        _normalise(previous.transmat + 1e-6, axis=1),
        (raw_means - mean) / std,
        np.maximum(raw_vars / std**2, 1e-3),
    )


def _canonical(
    startprob: np.ndarray,
    transmat: np.ndarray,
    means: np.ndarray,
    variances: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
) -> HmmParams:
    """A fitted model in regime-code state order."""
    order = canonical_order(means)
    return HmmParams(
        startprob=_normalise(startprob[order] + 1e-6),
        transmat=_normalise(transmat[np.ix_(order, order)] + 1e-6, axis=1),
        means=means[order].copy(),
        variances=np.asarray(variances)[order].copy(),
        feature_mean=mean,
        feature_std=std,
    )


def fit_hmms(
    windows: list[np.ndarray], previous: list[HmmParams | None], *, seed: int, n_iter: int
) -> list[HmmParams | None]:
    """Many models fitted at once (``core.hmm_em``: hmmlearn's EM over a batch of
    equal-length windows), each what ``fit_hmm``'s first attempt gives: warm-started from
    its previous model, or (none) from hmmlearn's own initialisation of that window. None
    where that attempt fails (the forward pass underflows, or a parameter is not finite):
    the caller fits that window alone with ``fit_hmm``."""
    out: list[HmmParams | None] = [None] * len(windows)
    groups: dict[tuple[int, bool], list[int]] = {}
    scaled = [_standardise(w) for w in windows]
    starts: dict[int, tuple[np.ndarray, ...]] = {}
    for r, (x, mean, std) in enumerate(scaled):
        start = _initial(x, seed) if (p := previous[r]) is None else _warm_start(p, mean, std)
        if start is not None:
            starts[r] = start
            groups.setdefault((len(x), p is not None), []).append(r)
    for (_, warm), group in groups.items():
        columns = zip(*(starts[r] for r in group), strict=True)
        models, ok = hmm_em.refit(
            np.stack([scaled[r][0] for r in group]),
            hmm_em.Models(*(np.stack(parts) for parts in columns)),
            warm_iterations(n_iter) if warm else n_iter,
            _PRIORS,
        )
        for g, r in enumerate(group):
            fitted = (models.startprob[g], models.transmat[g], models.means[g], models.variances[g])
            if ok[g] and all(np.isfinite(a).all() for a in fitted):
                out[r] = _canonical(*fitted, scaled[r][1], scaled[r][2])
    return out


def _initial(x: np.ndarray, seed: int) -> tuple[np.ndarray, ...] | None:
    """hmmlearn's initialisation of a fresh model on a standardised window (k-means
    means, the window's variances, random start and transition probabilities), as its
    ``fit`` makes it before the first EM iteration: a fit of no iterations."""
    model = _model(seed=seed, n_iter=0)
    try:
        with np.errstate(all="ignore"):
            model.fit(x)
    except ValueError:
        return None
    return (model.startprob_, model.transmat_, model.means_, np.asarray(model._covars_))


def _model(*, seed: int, n_iter: int, warm: bool = False) -> Any:
    """An unfitted ``GaussianHMM`` as the regime model configures it."""
    from hmmlearn.hmm import GaussianHMM

    common = {
        "n_components": len(REGIME_NAMES),
        "covariance_type": "diag",
        "n_iter": n_iter,
        "random_state": seed,
        "implementation": "scaling",
        "min_covar": 1e-3,
        "means_weight": _PRIORS.means_weight,
        "covars_prior": _PRIORS.covars_prior,
        "covars_weight": 1.0,
        "tol": _PRIORS.tol,
    }
    return GaussianHMM(**common, init_params="", params="stmc") if warm else GaussianHMM(**common)


def _fit_once(
    x: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    seed: int,
    n_iter: int,
    previous: HmmParams | None,
) -> object | None:
    model = _model(seed=seed, n_iter=n_iter, warm=previous is not None)
    if previous is not None:
        start = _warm_start(previous, mean, std)
        model.startprob_, model.transmat_, model.means_, model.covars_ = start
    try:
        with np.errstate(all="ignore"):
            model.fit(x)
    except ValueError:
        return None
    params = (model.startprob_, model.transmat_, model.means_, np.asarray(model._covars_))
    if not all(np.isfinite(a).all() for a in params):
        return None
    return model


def _normalise(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    return a / a.sum(axis=axis, keepdims=axis is not None)
