"""Training, evaluating, saving and loading the foundation regime model.

The model itself and its streaming inference are pure and live in
``sovereign.core.foundation``; this module reads bars (``LoadedData``), writes and reads
checkpoint files, and trains, so the core never touches a file or a data loader.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812  (the universal torch idiom)

from sovereign.core.foundation import (
    EVAL_CHUNK,
    N_REGIMES,
    RANGING,
    TRENDING_DOWN,
    TRENDING_UP,
    VOLATILE,
    Checkpoint,
    FoundationConfig,
    FoundationModel,
    build_model,
)
from sovereign.core.foundation_features import (
    KNOWN_COLUMN,
    LOGVOL_COLUMN,
    N_FEATURES,
    RET_COLUMN,
    VAR_FLOOR,
    VOLREL_COLUMN,
    feature_matrix,
    standardize,
)
from sovereign.data.loaders import LoadedData
from sovereign.domain.regimes import REGIME_NAMES

_TRAIN_EVAL_WINDOWS = 2048


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write a checkpoint with ``torch.save`` (plain containers, loadable weights-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a crash never leaves a half-written checkpoint in place.
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt.to_payload(), tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, *, expected: FoundationConfig | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` from a local file.

    Parameters
    ----------
    path
        A local file. Nothing is ever downloaded.
    expected
        If given, the checkpoint's config must equal it.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the path is a URL, the file is not a readable checkpoint (corrupt, truncated,
        or holding anything but plain containers and tensors), its version is not
        :data:`FOUNDATION_VERSION`, or its config or weights do not match.
    """
    if isinstance(path, str) and "://" in path:
        raise ValueError(f"load_checkpoint reads local files only, got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"foundation checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load raises a zoo of types on a bad file (UnpicklingError, RuntimeError,
    # EOFError, zipfile errors ...); all mean the same thing here.
    except Exception as exc:
        raise ValueError(
            f"{path}: not a readable foundation checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a foundation checkpoint (holds {type(payload).__name__})")
    try:
        ckpt = Checkpoint.from_payload(payload)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if expected is not None and ckpt.config != expected:
        diff = {
            k: (v, getattr(expected, k))
            for k, v in ckpt.config.to_dict().items()
            if getattr(expected, k) != v
        }
        raise ValueError(f"{path}: config differs from the expected one (have, want): {diff}")
    return ckpt


# -- DATASET --


@dataclasses.dataclass(slots=True)
class _Prepared:
    # All symbols' bars concatenated; window ends are global row indices.
    features: np.ndarray  # (rows, F) float32, standardised
    vol_target: np.ndarray  # (rows,) float32, standardised forward log vol (NaN: none)
    labels: np.ndarray  # (rows,) int64 regime target (-1: none)
    train_ends: np.ndarray
    val_ends: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    vol_mean: float
    vol_std: float
    volatile_log_vol: float


def _as_list(data: LoadedData | Sequence[LoadedData]) -> list[LoadedData]:
    return [data] if isinstance(data, LoadedData) else list(data)


def _series(datas: list[LoadedData]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for data in datas:
        # The frame is sorted by (ts, symbol), so each group is in time order.
        for _, group in data.frame.groupby("symbol", sort=True):
            out.append(
                (
                    group["close"].to_numpy(dtype=np.float64),
                    group["volume"].to_numpy(dtype=np.float64),
                )
            )
    return out


def _forward_targets(
    raw: np.ndarray, close: np.ndarray, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Forward log vol and log return over the ``horizon`` bars after each bar of one
    symbol (NaN where fewer bars follow): they look ahead, so only training uses them."""
    h = horizon
    n = raw.shape[0]
    fwd_vol = np.full(n, np.nan)
    fwd_ret = np.full(n, np.nan)
    if n > h:
        sq = np.concatenate([[0.0], np.cumsum(raw[:, RET_COLUMN] ** 2)])
        last = n - h  # window ends 0..last-1 have H bars ahead
        fwd_vol[:last] = 0.5 * np.log((sq[h + 1 : n + 1] - sq[1 : last + 1]) / h + VAR_FLOOR)
        fwd_ret[:last] = np.log(close[h:] / close[:last])
    return fwd_vol, fwd_ret


def _feature_stats(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the raw features on the training bars (the flag
    keeps 0 and 1; the relative volume is measured where the volume is known)."""
    mean = np.zeros(N_FEATURES)
    std = np.ones(N_FEATURES)
    for j in (RET_COLUMN, LOGVOL_COLUMN):
        col = stats[:, j]
        col = col[np.isfinite(col)]
        if col.size > 1:
            mean[j], std[j] = col.mean(), max(col.std(), 1e-8)
    col = stats[stats[:, KNOWN_COLUMN] > 0, VOLREL_COLUMN]
    if col.size > 1:
        mean[VOLREL_COLUMN], std[VOLREL_COLUMN] = col.mean(), max(col.std(), 1e-8)
    return mean, std


def _fit_statistics(
    stat_rows: list[np.ndarray], train_fwd: np.ndarray, config: FoundationConfig
) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Feature mean and std, forward-vol mean and std and the Volatile threshold, all
    measured on the training part only."""
    mean, std = _feature_stats(np.concatenate(stat_rows))
    if train_fwd.size < 2:
        raise ValueError(
            f"too few training windows ({train_fwd.size}): each symbol needs more than "
            f"seq_len + horizon bars in its first {1 - config.val_fraction:.0%}"
        )
    vol_mean = float(train_fwd.mean())
    vol_std = float(max(train_fwd.std(), 1e-8))
    volatile = float(np.quantile(train_fwd, config.volatile_quantile))
    return mean, std, vol_mean, vol_std, volatile


def _regime_labels(
    fwd_vol: np.ndarray, fwd_ret: np.ndarray, band: np.ndarray, volatile: float
) -> np.ndarray:
    """The regime target of each bar (-1 where its forward vol or trend band is undefined)."""
    labels = np.full(fwd_vol.shape[0], -1, dtype=np.int64)
    defined = np.isfinite(fwd_vol) & np.isfinite(band)
    labels[defined] = np.select(
        [
            fwd_vol[defined] > volatile,
            fwd_ret[defined] > band[defined],
            fwd_ret[defined] < -band[defined],
        ],
        [VOLATILE, TRENDING_UP, TRENDING_DOWN],
        default=RANGING,
    )
    return labels


def _prepare(
    datas: list[LoadedData], config: FoundationConfig, fitted: Checkpoint | None = None
) -> _Prepared:
    h, length = config.horizon, config.seq_len
    raws, fwd_vols, fwd_rets, cur_vols, ends_train, ends_val, stat_rows = [], [], [], [], [], [], []
    offset = 0
    for close, volume in _series(datas):
        raw = feature_matrix(
            close, volume, vol_span=config.vol_span, volume_span=config.volume_span
        )
        keep = ~np.isnan(raw[:, RET_COLUMN])
        raw, close = raw[keep], close[keep]
        n = raw.shape[0]
        split = n - math.ceil(config.val_fraction * n)
        fwd_vol, fwd_ret = _forward_targets(raw, close, h)
        ends_train.append(offset + np.arange(length - 1, split - h))
        ends_val.append(offset + np.arange(max(length - 1, split - 1), n - h))
        stat_rows.append(raw[:split])
        raws.append(raw)
        fwd_vols.append(fwd_vol)
        fwd_rets.append(fwd_ret)
        cur_vols.append(np.exp(raw[:, LOGVOL_COLUMN]))
        offset += n
    if not raws:
        raise ValueError("no bars to build foundation features from")
    raw_all = np.concatenate(raws)
    fwd_vol_all = np.concatenate(fwd_vols)
    train_ends = np.concatenate(ends_train).astype(np.int64)
    val_ends = np.concatenate(ends_val).astype(np.int64)

    if fitted is None:
        mean, std, vol_mean, vol_std, volatile = _fit_statistics(
            stat_rows, fwd_vol_all[train_ends], config
        )
    else:
        mean, std = np.asarray(fitted.feature_mean), np.asarray(fitted.feature_std)
        vol_mean, vol_std = fitted.vol_mean, fitted.vol_std
        volatile = fitted.volatile_log_vol

    band = config.trend_k * np.concatenate(cur_vols) * math.sqrt(h)
    labels = _regime_labels(fwd_vol_all, np.concatenate(fwd_rets), band, volatile)
    # Only a one-bar window can end where log_vol (and so the trend band) is undefined.
    train_ends = train_ends[labels[train_ends] >= 0]
    val_ends = val_ends[labels[val_ends] >= 0]
    return _Prepared(
        features=standardize(raw_all, mean, std, config.feature_clip),
        vol_target=((fwd_vol_all - vol_mean) / vol_std).astype(np.float32),
        labels=labels,
        train_ends=train_ends,
        val_ends=val_ends,
        mean=mean,
        std=std,
        vol_mean=vol_mean,
        vol_std=vol_std,
        volatile_log_vol=volatile,
    )


def _batch(
    prep: _Prepared, ends: np.ndarray, seq_len: int, hide_volume: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    window = ends[:, None] + np.arange(-seq_len + 1, 1)[None, :]
    x = prep.features[window]
    nxt = prep.features[ends + 1]
    if hide_volume is not None and hide_volume.any():
        # Exactly what close-only bars look like after standardisation.
        x[hide_volume, :, VOLREL_COLUMN] = 0.0
        x[hide_volume, :, KNOWN_COLUMN] = 0.0
        nxt[hide_volume, VOLREL_COLUMN] = 0.0
        nxt[hide_volume, KNOWN_COLUMN] = 0.0
    return (
        torch.from_numpy(x),
        torch.from_numpy(nxt),
        torch.from_numpy(prep.vol_target[ends]),
        torch.from_numpy(prep.labels[ends]),
    )


def _loss_terms(
    model: FoundationModel, batch: tuple[torch.Tensor, ...]
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    # Returns [total, next, vol, regime] and the vol and regime outputs.
    x, nxt, vol, labels = batch
    pred_next, pred_vol, logits = model(x)
    next_loss = F.mse_loss(pred_next, nxt)
    vol_loss = F.mse_loss(pred_vol, vol)
    regime_loss = F.cross_entropy(logits, labels)
    return [next_loss + vol_loss + regime_loss, next_loss, vol_loss, regime_loss], pred_vol, logits


def _evaluate(
    model: FoundationModel, prep: _Prepared, ends: np.ndarray
) -> tuple[dict[str, float], np.ndarray]:
    # Means over every window in ``ends`` (chunked, each chunk weighted by its size), and
    # the predicted standardised forward log vol of each window.
    names = ("loss", "next", "vol", "regime", "accuracy")
    if ends.size == 0:
        return dict.fromkeys(names, float("nan")), np.zeros(0, dtype=np.float32)
    sums = np.zeros(len(names))
    preds = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, ends.size, EVAL_CHUNK):
            chunk = ends[start : start + EVAL_CHUNK]
            batch = _batch(prep, chunk, model.config.seq_len)
            terms, pred_vol, logits = _loss_terms(model, batch)
            accuracy = (logits.argmax(-1) == batch[3]).float().mean()
            sums += chunk.size * np.array([float(t) for t in (*terms, accuracy)])
            preds.append(pred_vol.numpy())
    model.train(was_training)
    return dict(zip(names, (sums / ends.size).tolist(), strict=True)), np.concatenate(preds)


# -- TRAINING --


def _bar_lengths(datas: list[LoadedData]) -> list[int]:
    """The distinct bar lengths of the training data, in seconds (one at most)."""
    intervals = sorted({d.interval_s for d in datas})
    if len(intervals) > 1:
        # The statistics are per bar: mixing bar lengths would blur them all.
        raise ValueError(f"training data mixes bar lengths {intervals} s; train one per length")
    return intervals


def _optimise(
    model: FoundationModel,
    prep: _Prepared,
    config: FoundationConfig,
    rng: np.random.Generator,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> None:
    """Run the optimiser steps on batches of training windows sampled with ``rng``."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for step in range(1, steps + 1):
        ends = prep.train_ends[rng.integers(0, prep.train_ends.size, batch_size)]
        hide = rng.random(batch_size) < config.volume_dropout
        terms, _, _ = _loss_terms(model, _batch(prep, ends, config.seq_len, hide))
        optimiser.zero_grad(set_to_none=True)
        terms[0].backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if on_step is not None:
            names = ("loss", "next", "vol", "regime")
            on_step(step, {k: v.item() for k, v in zip(names, terms, strict=True)})


def _train_model(
    prep: _Prepared,
    config: FoundationConfig,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> tuple[FoundationModel, dict[str, float], dict[str, float], dict[str, float]]:
    """Train a fresh model; return it with its initial and final training scores and its
    validation score. The caller's torch threads, determinism and RNG are restored."""
    rng = np.random.default_rng(seed)
    monitor = np.sort(
        rng.choice(
            prep.train_ends,
            size=min(_TRAIN_EVAL_WINDOWS, prep.train_ends.size),
            replace=False,
        )
    )
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FoundationModel(config)
            initial, _ = _evaluate(model, prep, monitor)
            _optimise(
                model, prep, config, rng, steps=steps, batch_size=batch_size, lr=lr, on_step=on_step
            )
            train, _ = _evaluate(model, prep, monitor)
            val, _ = _evaluate(model, prep, prep.val_ends)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return model, initial, train, val


def train_foundation(
    data: LoadedData | Sequence[LoadedData],
    config: FoundationConfig | None = None,
    *,
    seed: int,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Checkpoint:
    """Pretrain the foundation model on bars, self-supervised (see the module docstring).

    Parameters
    ----------
    data
        Bars to learn from; several sources may be given (e.g. one with volume and a
        close-only one). Every symbol contributes windows in proportion to its bars.
    config
        Sizes; default :class:`FoundationConfig()`.
    seed
        Seeds torch and numpy. The same seed and data give bit-identical weights.
    steps
        Optimiser steps (AdamW, gradient norm clipped to 1).
    batch_size
        Windows per step, sampled uniformly with replacement from the training windows.
    lr
        Learning rate.
    on_step
        Called after each step with the 1-based step number and that batch's loss terms
        (``loss``, ``next``, ``vol``, ``regime``).

    Returns
    -------
    Checkpoint
        Weights, statistics and the initial/final training and validation losses.

    Notes
    -----
    Runs on one thread with deterministic algorithms and its own torch RNG; the caller's
    thread count, determinism flag and torch RNG state are restored afterwards.
    """
    config = config or FoundationConfig()
    if steps < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    datas = _as_list(data)
    intervals = _bar_lengths(datas)
    prep = _prepare(datas, config)
    model, initial, train, val = _train_model(
        prep, config, seed=seed, steps=steps, batch_size=batch_size, lr=lr, on_step=on_step
    )

    symbols = sorted({s for d in datas for s in d.symbols})
    return Checkpoint(
        config=config,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        feature_mean=tuple(float(x) for x in prep.mean),
        feature_std=tuple(float(x) for x in prep.std),
        vol_mean=prep.vol_mean,
        vol_std=prep.vol_std,
        volatile_log_vol=prep.volatile_log_vol,
        seed=seed,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        initial_train_loss=initial["loss"],
        train_loss=train["loss"],
        val_loss=val["loss"],
        losses={
            **{f"train_{k}": train[k] for k in ("next", "vol", "regime")},
            **{f"val_{k}": val[k] for k in ("next", "vol", "regime")},
        },
        source="; ".join(d.source for d in datas),
        symbols=tuple(symbols),
        interval_s=int(intervals[0]),
    )


def evaluate_foundation(
    ckpt: Checkpoint, data: LoadedData | Sequence[LoadedData]
) -> dict[str, float]:
    """Score a checkpoint on the held-out tail of each symbol of ``data``.

    The tail, the targets and the Volatile threshold are defined as in training, with
    the checkpoint's statistics (so on the training data this is the validation set).

    Returns
    -------
    dict
        ``loss``, ``next``, ``vol`` and ``regime`` (the loss terms), ``accuracy`` (regime
        head vs the forward targets), ``majority_accuracy`` (always guessing the most
        common target class, a baseline), ``vol_corr`` (correlation of the predicted
        and realised forward log vol), ``persistence_vol_corr`` (the same for "forward
        vol = current vol", a baseline), ``n_windows`` and ``class_share_<name>``.
    """
    prep = _prepare(_as_list(data), ckpt.config, fitted=ckpt)
    ends = prep.val_ends
    result, preds = _evaluate(build_model(ckpt), prep, ends)
    counts = np.bincount(prep.labels[ends], minlength=N_REGIMES)
    result["majority_accuracy"] = float(counts.max() / max(ends.size, 1))
    result["n_windows"] = float(ends.size)
    for i, name in enumerate(REGIME_NAMES):
        result[f"class_share_{name}"] = float(counts[i] / max(ends.size, 1))
    nan = float("nan")
    result["vol_corr"] = result["persistence_vol_corr"] = nan
    if ends.size > 1:
        actual = prep.vol_target[ends]
        result["vol_corr"] = float(np.corrcoef(preds, actual)[0, 1])
        # Standardised log_vol is an affine map of the current log vol (up to clipping), so
        # its correlation with the target is the persistence baseline's.
        result["persistence_vol_corr"] = float(
            np.corrcoef(prep.features[ends, LOGVOL_COLUMN], actual)[0, 1]
        )
    return result


def predict_series(
    ckpt: Checkpoint, close: np.ndarray, volume: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Run the model over one symbol's whole series at once (research and tests).

    Bar t sees bars 0..t only, exactly as :class:`FoundationRegime` would.

    Returns
    -------
    dict
        ``probabilities`` float32 (T, 4) (0.25 where not ready), ``forward_vol`` (T,)
        (NaN where not ready) and ``ready`` bool (T,). Bars with a bad close are not
        ready and do not count.
    """
    cfg = ckpt.config
    raw = feature_matrix(close, volume, vol_span=cfg.vol_span, volume_span=cfg.volume_span)
    valid = np.flatnonzero(~np.isnan(raw[:, RET_COLUMN]))
    z = standardize(
        raw[valid], np.asarray(ckpt.feature_mean), np.asarray(ckpt.feature_std), cfg.feature_clip
    )
    t_len = raw.shape[0]
    probs = np.full((t_len, N_REGIMES), 1.0 / N_REGIMES, dtype=np.float32)
    fwd = np.full(t_len, np.nan)
    ready = np.zeros(t_len, dtype=bool)
    ends = np.arange(cfg.seq_len - 1, valid.size)
    if ends.size:
        model = build_model(ckpt)
        window = ends[:, None] + np.arange(-cfg.seq_len + 1, 1)[None, :]
        with torch.no_grad():
            for i in range(0, ends.size, EVAL_CHUNK):
                rows = valid[ends[i : i + EVAL_CHUNK]]
                _, vol, logits = model(torch.from_numpy(z[window[i : i + EVAL_CHUNK]]))
                probs[rows] = torch.softmax(logits, dim=-1).numpy()
                fwd[rows] = np.exp(vol.numpy().astype(np.float64) * ckpt.vol_std + ckpt.vol_mean)
        ready[valid[ends]] = True
    return {"probabilities": probs, "forward_vol": fwd, "ready": ready}
