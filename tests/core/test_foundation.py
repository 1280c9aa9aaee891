"""The transformer foundation model: causal features, training, checkpoints, streaming."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import sovereign  # noqa: F401  (pins BLAS/OpenMP threads before torch starts)
from sovereign.core.foundation import (
    FOUNDATION_VERSION,
    Checkpoint,
    FoundationConfig,
    FoundationRegime,
)
from sovereign.core.foundation_features import N_FEATURES, FeatureState, feature_matrix
from sovereign.data.loaders import LoadedData, load_ohlcv
from sovereign.messages import REGIME_UNKNOWN
from sovereign.training.foundation import (
    evaluate_foundation,
    load_checkpoint,
    predict_series,
    save_checkpoint,
    train_foundation,
)

# Two threads stall badly on the two-core machines (FIELD-NOTES).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data() -> LoadedData:
    return load_ohlcv("sample", symbols=["AAPL", "MSFT"], end="2003-12-31")


@pytest.fixture(scope="module")
def trained(data: LoadedData) -> Checkpoint:
    return train_foundation(data, seed=11, steps=60)


def random_bars(t: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, N) closes, volumes with gaps (NaN), and a random presence mask."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.015, (t, n)), axis=0))
    volume = rng.lognormal(12.0, 0.5, (t, n))
    volume[rng.random((t, n)) < 0.1] = np.nan
    volume[:, -1] = np.nan  # one close-only symbol
    mask = rng.random((t, n)) < 0.85
    return close, volume, mask


def stream(model: FoundationRegime, close: np.ndarray, volume: np.ndarray, mask: np.ndarray):
    """Feed (T, N) bars; return probabilities (T, N, 4), forward vol (T, N), ready (T, N)."""
    probs, vols, ready = [], [], []
    for t in range(close.shape[0]):
        model.update(mask[t], close[t], volume[t])
        probs.append(model.probabilities.copy())
        vols.append(model.forward_vol.copy())
        ready.append(model.ready.copy())
    return np.stack(probs), np.stack(vols), np.stack(ready)


# -- FEATURES --


def test_streaming_features_with_random_masks_equal_batch_features() -> None:
    close, volume, mask = random_bars(300, 4, seed=1)
    close[[40, 41, 200], [0, 0, 2]] = np.nan  # a masked-in bar with a bad close is no bar
    close[90, 1] = -1.0
    state = FeatureState(4)
    rows = [state.update(mask[t], close[t], volume[t]) for t in range(300)]
    streamed = np.stack(rows)  # (T, N, F)
    for i in range(4):
        present = mask[:, i]
        batch = feature_matrix(close[present, i], volume[present, i])
        np.testing.assert_allclose(streamed[present, i], batch, rtol=1e-9, atol=1e-12)
        assert np.isnan(streamed[~present, i]).all()
    # The close-only symbol: flag 0 and relative volume 0 on every bar it has.
    last = streamed[mask[:, 3] & np.isfinite(close[:, 3]), 3]
    assert (last[:, 3] == 0).all()
    assert (last[:, 2] == 0).all()


def test_feature_rows_do_not_depend_on_later_bars() -> None:
    close, volume, _ = random_bars(200, 1, seed=2)
    full = feature_matrix(close[:, 0], volume[:, 0])
    prefix = feature_matrix(close[:120, 0], volume[:120, 0])
    np.testing.assert_array_equal(full[:120], prefix)
    assert full.shape == (200, N_FEATURES)
    assert np.isnan(full[0, 1]) and full[0, 0] == 0.0  # no return before the first bar


# -- STREAMING INFERENCE --


def test_streaming_outputs_at_t_do_not_change_when_later_bars_arrive(
    trained: Checkpoint,
) -> None:
    close, volume, mask = random_bars(160, 3, seed=3)
    cut = 120
    p_full, v_full, r_full = stream(FoundationRegime(trained, 3), close, volume, mask)
    p_pre, v_pre, r_pre = stream(
        FoundationRegime(trained, 3), close[:cut], volume[:cut], mask[:cut]
    )
    assert r_pre.any()  # the comparison covers real model outputs
    np.testing.assert_array_equal(p_full[:cut], p_pre)
    np.testing.assert_array_equal(v_full[:cut], v_pre)
    np.testing.assert_array_equal(r_full[:cut], r_pre)
    # The batch path is causal too: a longer series leaves earlier rows alone.
    full = predict_series(trained, close[:, 0], volume[:, 0])
    pre = predict_series(trained, close[:cut, 0], volume[:cut, 0])
    np.testing.assert_array_equal(full["probabilities"][:cut], pre["probabilities"])
    np.testing.assert_array_equal(full["forward_vol"][:cut], pre["forward_vol"])


def test_streaming_matches_batch_inference(trained: Checkpoint) -> None:
    close, volume, mask = random_bars(150, 3, seed=4)
    probs, vols, ready = stream(FoundationRegime(trained, 3), close, volume, mask)
    for i in range(3):
        present = mask[:, i]
        batch = predict_series(trained, close[present, i], volume[present, i])
        np.testing.assert_array_equal(ready[present, i], batch["ready"])
        np.testing.assert_allclose(probs[present, i], batch["probabilities"], atol=1e-5)
        np.testing.assert_allclose(vols[present, i], batch["forward_vol"], rtol=1e-5)


def test_probabilities_are_a_distribution_and_ready_after_seq_len_bars(
    trained: Checkpoint,
) -> None:
    seq_len = trained.config.seq_len
    close, volume, _ = random_bars(100, 2, seed=5)
    model = FoundationRegime(trained, 2)
    probs, vols, ready = stream(model, close, volume, np.ones((100, 2), dtype=bool))
    assert not ready[: seq_len - 1].any()
    assert ready[seq_len - 1 :].all()
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-6)
    assert (probs[: seq_len - 1] == 0.25).all()
    assert np.isnan(vols[: seq_len - 1]).all()
    assert (np.isfinite(vols[seq_len - 1 :]) & (vols[seq_len - 1 :] > 0)).all()
    assert (model.codes == probs[-1].argmax(axis=1)).all()


def test_masked_out_symbols_keep_their_state(trained: Checkpoint) -> None:
    close, volume, _ = random_bars(80, 2, seed=6)
    model = FoundationRegime(trained, 2)
    stream(model, close[:70], volume[:70], np.ones((70, 2), dtype=bool))
    before = (model.probabilities[1].copy(), model.forward_vol[1], model.features.count[1])
    stream(model, close[70:], volume[70:], np.tile([True, False], (10, 1)))
    assert (model.probabilities[1] == before[0]).all()
    assert model.forward_vol[1] == before[1]
    assert model.features.count[1] == before[2]
    fresh = FoundationRegime(trained, 2)
    stream(fresh, close[:3], volume[:3], np.tile([True, False], (3, 1)))
    assert fresh.codes[1] == REGIME_UNKNOWN
    assert not fresh.ready.any()


# -- TRAINING --


def test_training_is_deterministic_for_a_seed(data: LoadedData) -> None:
    a = train_foundation(data, seed=5, steps=3, batch_size=8)
    b = train_foundation(data, seed=5, steps=3, batch_size=8)
    c = train_foundation(data, seed=6, steps=3, batch_size=8)
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.train_loss == b.train_loss and a.val_loss == b.val_loss
    assert not all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)
    # The caller's torch settings are left as they were.
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 1


def test_short_training_reduces_the_loss(data: LoadedData, trained: Checkpoint) -> None:
    steps_seen: list[int] = []
    train_foundation(
        data, seed=11, steps=2, batch_size=4, on_step=lambda s, _: steps_seen.append(s)
    )
    assert steps_seen == [1, 2]
    assert trained.train_loss < 0.8 * trained.initial_train_loss
    assert np.isfinite(trained.val_loss)
    assert set(trained.losses) == {
        "train_next",
        "train_vol",
        "train_regime",
        "val_next",
        "val_vol",
        "val_regime",
    }
    assert trained.symbols == ("AAPL", "MSFT")


def test_evaluate_reports_validation_losses_and_accuracy(
    data: LoadedData, trained: Checkpoint
) -> None:
    result = evaluate_foundation(trained, data)
    assert result["loss"] == pytest.approx(trained.val_loss, rel=1e-6)
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["n_windows"] > 100
    shares = [result[f"class_share_{n}"] for n in ("TrendingUp", "TrendingDown", "Ranging")]
    assert sum(shares) + result["class_share_Volatile"] == pytest.approx(1.0)


def test_close_only_data_trains_and_streams() -> None:
    data = load_ohlcv("sample:sp500", symbols=["KO", "PG"], start="2008-01-01")
    ckpt = train_foundation(data, seed=1, steps=2, batch_size=8)
    assert ckpt.feature_mean[2:] == (0.0, 0.0) and ckpt.feature_std[2:] == (1.0, 1.0)
    close = data.frame.pivot(index="ts", columns="symbol", values="close").to_numpy()
    model = FoundationRegime(ckpt, 2)
    stream(model, close[:70], np.full((70, 2), np.nan), np.ones((70, 2), dtype=bool))
    assert model.ready.all()


# -- CHECKPOINTS --


def test_checkpoint_round_trip_gives_the_same_outputs(trained: Checkpoint, tmp_path: Path) -> None:
    path = tmp_path / "foundation.pt"
    save_checkpoint(path, trained)
    loaded = load_checkpoint(path, expected=trained.config)
    for f in dataclasses.fields(Checkpoint):
        if f.name != "state_dict":
            assert getattr(loaded, f.name) == getattr(trained, f.name), f.name
    close, volume, mask = random_bars(90, 2, seed=7)
    p1, v1, _ = stream(FoundationRegime(trained, 2), close, volume, mask)
    p2, v2, _ = stream(FoundationRegime(loaded, 2), close, volume, mask)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(v1, v2)


def test_checkpoint_version_mismatch_raises(trained: Checkpoint, tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    payload = trained.to_payload()
    payload["version"] = FOUNDATION_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(ValueError, match="version 2 does not match this code's version 1"):
        load_checkpoint(path)


def test_garbage_or_truncated_checkpoint_raises(trained: Checkpoint, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable foundation checkpoint"):
        load_checkpoint(garbage)
    good = tmp_path / "good.pt"
    save_checkpoint(good, trained)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable foundation checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(ValueError, match="local files only"):
        load_checkpoint("https://example.com/foundation.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_config_mismatch_raises(trained: Checkpoint, tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, trained)
    with pytest.raises(ValueError, match="config differs"):
        load_checkpoint(path, expected=FoundationConfig(seq_len=32))
    payload = trained.to_payload()
    payload["config"]["d_model"] = 16
    torch.save(payload, path)
    with pytest.raises(ValueError, match="weights do not fit its config"):
        load_checkpoint(path)
    payload = trained.to_payload()
    payload["config"]["colour"] = "blue"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        load_checkpoint(path)


def test_config_rejects_inconsistent_sizes() -> None:
    with pytest.raises(ValueError, match="must divide d_model"):
        FoundationConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="seq_len"):
        FoundationConfig(seq_len=0)


def test_universes_run_through_the_model_together_as_they_would_alone(
    trained: Checkpoint,
) -> None:
    """The regime actor runs every shard's windows through the model in one call
    (prepare, infer, apply): each universe ends where its own updates would take it."""
    close, volume, mask = random_bars(140, 5, seed=6)
    alone = [FoundationRegime(trained, 3), FoundationRegime(trained, 2)]
    together = [FoundationRegime(trained, 3), FoundationRegime(trained, 2)]
    parts = [slice(0, 3), slice(3, 5)]
    ran = 0
    for t in range(len(close)):
        for model, cols in zip(alone, parts, strict=True):
            model.update(mask[t, cols], close[t, cols], volume[t, cols])
        windows = [
            (model, model.prepare(mask[t, cols], close[t, cols], volume[t, cols]))
            for model, cols in zip(together, parts, strict=True)
        ]
        ready = [(m, w) for m, w in windows if w is not None]
        if ready:
            vol, probs = ready[0][0].infer(np.concatenate([w[1] for _, w in ready]))
            at = 0
            for m, (run, _) in ready:
                m.apply(run, vol[at : at + run.size], probs[at : at + run.size])
                at += run.size
            ran += len(ready) == 2
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
            np.testing.assert_allclose(a.forward_vol, b.forward_vol, rtol=1e-5)
            np.testing.assert_array_equal(a.ready, b.ready)
    assert ran > 50  # both universes went through the model together on most bars
