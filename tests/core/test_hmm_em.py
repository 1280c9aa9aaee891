"""The batched refit is hmmlearn's EM: the same models, window by window."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.core import hmm_em
from sovereign.core.hmm_fit import fit_hmm, fit_hmms
from sovereign.core.regime import HmmFeatureState
from sovereign.data.synthetic import generate


def features(close: np.ndarray) -> np.ndarray:
    state = HmmFeatureState(close.shape[1])
    rows = [state.update(np.ones(close.shape[1], bool), c).copy() for c in close]
    return np.array(rows)[50:]  # (T, n, 3), past the features' warm-up


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return features(generate(6, 1400, seed=5).close)


def hmmlearn_refit(window: np.ndarray, start: hmm_em.Models, g: int, n_iter: int):
    """hmmlearn's warm-started fit of window ``g``, the regime model's settings."""
    from hmmlearn.hmm import GaussianHMM

    model = GaussianHMM(
        n_components=4,
        covariance_type="diag",
        n_iter=n_iter,
        implementation="scaling",
        means_weight=1e-2,
        covars_prior=1e-2,
        covars_weight=1.0,
        init_params="",
        params="stmc",
    )
    model.startprob_, model.transmat_ = start.startprob[g], start.transmat[g]
    model.means_, model.covars_ = start.means[g], start.variances[g]
    model.fit(window)
    return model


def test_a_batch_of_refits_gives_hmmlearn_s_models_window_by_window(x: np.ndarray) -> None:
    """Six windows, each started from a model fitted on an earlier window, refitted together
    and one by one with hmmlearn: the same parameters (to rounding) and the same number of
    iterations run (each window stops on its own tolerance)."""
    windows = [x[400:900, j] for j in range(x.shape[1])]
    firsts = [fit_hmm(x[:500, j], seed=3, n_iter=30) for j in range(x.shape[1])]
    scaled = [(w - w.mean(0)) / w.std(0) for w in windows]
    start = hmm_em.Models(
        np.stack([p.startprob for p in firsts]),
        np.stack([p.transmat for p in firsts]),
        np.stack([p.means for p in firsts]),
        np.stack([p.variances for p in firsts]),
    )
    for n_iter in (1, 3, 10, 40):
        models, ok = hmm_em.refit(np.stack(scaled), start, n_iter, hmm_em.Priors(1e-2, 1e-2))
        assert ok.all()
        iterations = set()
        for g, w in enumerate(scaled):
            ref = hmmlearn_refit(w, start, g, n_iter)
            iterations.add(ref.monitor_.iter)
            np.testing.assert_allclose(models.startprob[g], ref.startprob_, atol=1e-8)
            np.testing.assert_allclose(models.transmat[g], ref.transmat_, atol=1e-8)
            np.testing.assert_allclose(models.means[g], ref.means_, atol=1e-8)
            np.testing.assert_allclose(models.variances[g], ref._covars_, atol=1e-8)
        if n_iter == 40:
            assert len(iterations) > 1, "every window stopped on the same iteration"


def test_the_regime_model_s_fits_are_fit_hmm_s(x: np.ndarray) -> None:
    """``fit_hmms`` over windows of two lengths, refits and first fits mixed, gives what
    ``fit_hmm`` gives each one."""
    previous = [fit_hmm(x[:400, j], seed=7, n_iter=30) if j % 3 else None for j in range(6)]
    windows = [x[100 : (600 if j % 2 else 476), j] for j in range(x.shape[1])]
    batched = fit_hmms(windows, previous, seed=7, n_iter=30)
    for w, p, b in zip(windows, previous, batched, strict=True):
        alone = fit_hmm(w, seed=7, n_iter=30, previous=p)
        assert b is not None
        for name in ("startprob", "transmat", "means", "variances", "feature_mean"):
            np.testing.assert_allclose(getattr(b, name), getattr(alone, name), atol=1e-8)


def test_a_window_whose_forward_pass_underflows_is_reported_not_fitted(x: np.ndarray) -> None:
    """hmmlearn raises when every state's likelihood is 0 at some bar; the batch marks that
    window failed, leaves its start untouched and fits the others."""
    windows = np.stack([x[:300, 0], x[:300, 1]])
    windows = (windows - windows.mean(1, keepdims=True)) / windows.std(1, keepdims=True)
    windows[1, 150] = 1e6  # no state can have emitted this bar
    p = fit_hmm(x[:300, 0], seed=1, n_iter=10)
    start = hmm_em.Models(
        np.stack([p.startprob] * 2),
        np.stack([p.transmat] * 2),
        np.stack([p.means] * 2),
        np.stack([p.variances] * 2),
    )
    models, ok = hmm_em.refit(windows, start, 5, hmm_em.Priors(1e-2, 1e-2))
    assert ok.tolist() == [True, False]
    np.testing.assert_array_equal(models.means[1], p.means)
    with pytest.raises(ValueError):
        hmmlearn_refit(windows[1], start, 1, 5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), length=st.integers(60, 400), n_iter=st.integers(1, 12))
def test_any_window_refits_as_hmmlearn_refits_it(seed: int, length: int, n_iter: int) -> None:
    """Random walks of any length from a random start model: hmmlearn's parameters."""
    rng = np.random.default_rng(seed)
    window = rng.standard_normal((length, 3)).cumsum(axis=0) * 0.1 + rng.standard_normal(
        (length, 3)
    )
    window = (window - window.mean(0)) / window.std(0)
    k = 4
    start = hmm_em.Models(
        rng.dirichlet(np.ones(k))[None],
        rng.dirichlet(np.ones(k), size=k)[None],
        rng.standard_normal((1, k, 3)),
        rng.uniform(0.5, 2.0, (1, k, 3)),
    )
    models, ok = hmm_em.refit(window[None], start, n_iter, hmm_em.Priors(1e-2, 1e-2))
    ref = hmmlearn_refit(window, start, 0, n_iter)
    assert ok.all()
    np.testing.assert_allclose(models.transmat[0], ref.transmat_, atol=1e-7)
    np.testing.assert_allclose(models.means[0], ref.means_, atol=1e-7)
    np.testing.assert_allclose(models.variances[0], ref._covars_, rtol=1e-7, atol=1e-9)
