"""A small transformer "foundation model" of bar sequences, pretrained without labels.

The model reads the last ``seq_len`` bars of one symbol as standardised causal features
and predicts three things at the last bar: the next bar's features, the log realised
volatility over the next ``horizon`` bars, and a regime (the codes of
:data:`sovereign.messages.market.REGIME_NAMES`). The RegimeActor blends its regime
probabilities with the HMM's.

Features
    For each bar of one symbol (in bar order; a bar whose close is not a positive finite
    number is skipped as if it never came):

    0. ``log_return``: log(close / previous close); 0 on the first bar.
    1. ``log_vol``: log realised volatility proxy, 0.5 * log(v + 1e-12) where v is the
       bias-corrected EWMA (span ``vol_span``) of the squared log returns up to this bar;
       undefined (NaN) on the first bar, which has no return yet.
    2. ``log_volume_rel``: log1p(volume) minus the bias-corrected EWMA (span
       ``volume_span``) of log1p(volume) over the earlier bars whose volume was known; 0
       on the first known volume and on every bar whose volume is unknown (NaN or
       negative), which also leaves the EWMA untouched.
    3. ``volume_known``: 1.0 if the bar's volume is known, else 0.0.

    :func:`feature_matrix` computes them for a whole series (vectorised) and
    :class:`FeatureState` one bar at a time for N symbols, both in
    :mod:`sovereign.core.foundation_features`; the tests prove they agree.
    Both return RAW features. :func:`standardize` then applies the mean and standard
    deviation measured on the training bars at training time (stored in the checkpoint),
    clips to +-``feature_clip``, and maps undefined values to 0 (the training mean). The
    flag is never rescaled, and ``log_volume_rel`` is 0 wherever the flag is 0.

Self-supervised targets (training and evaluation only)
    For a window ending at bar t, with H = ``horizon``, r the log returns and
    vol_t = exp(log_vol_t) the current realised volatility:

    * next-step: the standardised feature row of bar t + 1;
    * forward volatility: fwd_t = 0.5 * log(mean(r[t+1..t+H] ** 2) + 1e-12), standardised
      with the training windows' mean and standard deviation;
    * regime: ``Volatile`` if fwd_t is above the ``volatile_quantile`` (0.75) quantile of
      fwd over the training windows, else ``TrendingUp`` if log(close[t+H] / close[t]) >
      ``trend_k`` * vol_t * sqrt(H), ``TrendingDown`` if it is below minus that, else
      ``Ranging``.

    These targets LOOK AHEAD: they are built from the H bars after t, and only
    :func:`train_foundation` and :func:`evaluate_foundation` use them. At inference the
    model sees the past window and nothing else; the streaming class never looks ahead.

Data split
    The last ``val_fraction`` (15 %) of each symbol's bars are held out. Training windows
    end at t <= split - 1 - H, so no training target touches a held-out bar; validation
    windows end at t >= split - 1 (their inputs may reach back into the training bars,
    their targets never do). The standardisation statistics and the Volatile threshold
    come from the training part only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812  (the universal torch idiom)

from sovereign.core.foundation_features import (
    FEATURE_NAMES,
    N_FEATURES,
    RET_COLUMN,
    FeatureState,
    standardize,
)
from sovereign.domain.regimes import REGIME_NAMES, REGIME_UNKNOWN

__all__ = [
    "FOUNDATION_VERSION",
    "Checkpoint",
    "FoundationConfig",
    "FoundationModel",
    "FoundationRegime",
]

FOUNDATION_VERSION = 1
"""Checkpoint format version; bump it when the features, the model or the payload change."""

N_REGIMES = len(REGIME_NAMES)
VOLATILE = REGIME_NAMES.index("Volatile")
TRENDING_UP = REGIME_NAMES.index("TrendingUp")
TRENDING_DOWN = REGIME_NAMES.index("TrendingDown")
RANGING = REGIME_NAMES.index("Ranging")

EVAL_CHUNK = 512


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FoundationConfig:
    """Sizes of the foundation model, its features and its training targets.

    Parameters
    ----------
    seq_len
        Bars per input window; a symbol is ``ready`` after this many bars. Default 64.
    d_model
        Width of the transformer. Default 32.
    n_heads
        Attention heads; must divide ``d_model``. Default 4.
    n_layers
        Encoder layers. Default 2.
    d_ff
        Width of each layer's feed-forward block. Default 64.
    dropout
        Dropout inside the encoder during training (off at inference). Default 0.1.
    horizon
        Bars ahead for the forward-volatility and regime targets. Default 10.
    vol_span
        EWMA span of the squared returns behind ``log_vol``. Default 20.
    volume_span
        EWMA span of log1p(volume) behind ``log_volume_rel``. Default 20.
    feature_clip
        Standardised features are clipped to +-this, so a zero-return stretch (log of a
        tiny variance) or a volume spike cannot dominate a window. Default 5.
    val_fraction
        Share of each symbol's bars held out at the end for validation. Default 0.15.
    trend_k
        Trend threshold of the regime target, in units of vol * sqrt(horizon). Default 0.5.
    volatile_quantile
        Quantile of the training forward volatility above which a window's target is
        ``Volatile``. Default 0.75.
    volume_dropout
        Share of training windows whose volume is hidden (flag 0, relative volume 0),
        so a model trained on data with volume also handles close-only data. Default 0.1.
    """

    seq_len: int = 64
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 64
    dropout: float = 0.1
    horizon: int = 10
    vol_span: int = 20
    volume_span: int = 20
    feature_clip: float = 5.0
    val_fraction: float = 0.15
    trend_k: float = 0.5
    volatile_quantile: float = 0.75
    volume_dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("seq_len", "d_model", "n_heads", "n_layers", "d_ff", "horizon"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("vol_span", "volume_span"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        for name, low, high in (
            ("dropout", 0.0, 1.0),
            ("val_fraction", 0.0, 1.0),
            ("volatile_quantile", 0.0, 1.0),
            ("volume_dropout", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not (low <= value < high):
                raise ValueError(f"{name} must be in [{low}, {high}), got {value!r}")
        for name in ("feature_clip", "trend_k"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    def to_dict(self) -> dict[str, int | float]:
        """Return the fields as a plain dict (what a checkpoint stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FoundationConfig:
        """Build a config from a dict with exactly this class's fields.

        Raises
        ------
        ValueError
            On unknown or missing fields, or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        missing = sorted(names - set(values))
        if unknown or missing:
            raise ValueError(
                f"foundation config does not match this code: unknown fields {unknown}, "
                f"missing fields {missing}"
            )
        return cls(**dict(values))


# -- MODEL --


class _Block(nn.Module):
    # A pre-norm encoder layer. Written out rather than nn.TransformerEncoderLayer so
    # attention goes through the fused scaled_dot_product_attention kernel (the stock
    # layer took the unfused bmm path here, ~5x slower per training step) and so the
    # last layer can compute its queries at the last position only.

    def __init__(self, config: FoundationConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor, last_only: bool) -> torch.Tensor:
        b, length, d = h.shape
        heads = self.qkv(self.norm1(h)).view(b, length, 3, self.n_heads, d // self.n_heads)
        q, k, v = heads.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, d_head)
        if last_only:
            # The last position may attend to every position, so no mask is needed.
            h = h[:, -1:]
            att = F.scaled_dot_product_attention(q[:, :, -1:], k, v)
        else:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        att = att.transpose(1, 2).reshape(b, h.shape[1], d)
        h = h + self.drop(self.proj(att))
        return h + self.drop(self.ff(self.norm2(h)))


class FoundationModel(nn.Module):
    """Causal transformer encoder over a window of standardised features, read at its end.

    Parameters
    ----------
    config
        Sizes; the input is (batch, ``seq_len``, N_FEATURES) float32.

    Notes
    -----
    Pre-norm layers with a causal attention mask and a learned positional embedding.
    The heads read only the last position, so the last layer computes only that
    position's output (the same result as computing every position and taking the last).
    """

    def __init__(self, config: FoundationConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = nn.Linear(N_FEATURES, d)
        self.position = nn.Parameter(torch.zeros(config.seq_len, d))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(d)
        self.next_head = nn.Linear(d, N_FEATURES)
        self.vol_head = nn.Linear(d, 1)
        self.regime_head = nn.Linear(d, N_REGIMES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return next-step features (B, F), standardised forward log vol (B,), logits (B, 4)."""
        h = self.embed(x) + self.position
        for i, block in enumerate(self.blocks):
            h = block(h, last_only=i == len(self.blocks) - 1)
        last = self.norm(h[:, -1])
        return self.next_head(last), self.vol_head(last).squeeze(-1), self.regime_head(last)


# -- CHECKPOINTS --


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A trained foundation model and everything needed to use it on new bars.

    Parameters
    ----------
    config
        The model and feature sizes.
    state_dict
        The model weights (float32 CPU tensors).
    feature_mean, feature_std
        Standardisation statistics of the raw features, from the training bars.
    vol_mean, vol_std
        Standardisation of the forward log-volatility target (the head predicts it
        standardised).
    volatile_log_vol
        The Volatile threshold of the regime target, as a forward log vol.
    seed, steps, batch_size, lr
        How it was trained.
    initial_train_loss, train_loss, val_loss
        Total loss (sum of the three terms) on a fixed sample of training windows before
        and after training, and on every validation window after training.
    losses
        The final loss terms: ``train_next``, ``train_vol``, ``train_regime``,
        ``val_next``, ``val_vol``, ``val_regime``.
    source
        Description of the training data.
    symbols
        Symbols trained on.
    interval_s
        Bar length of the training data in seconds (the statistics are per bar, so a
        model trained on daily bars does not fit minute bars).
    version
        :data:`FOUNDATION_VERSION` at training time.
    """

    config: FoundationConfig
    state_dict: dict[str, torch.Tensor]
    feature_mean: tuple[float, ...]
    feature_std: tuple[float, ...]
    vol_mean: float
    vol_std: float
    volatile_log_vol: float
    seed: int
    steps: int
    batch_size: int
    lr: float
    initial_train_loss: float
    train_loss: float
    val_loss: float
    losses: dict[str, float]
    source: str
    symbols: tuple[str, ...]
    interval_s: int
    version: int = FOUNDATION_VERSION

    def to_payload(self) -> dict[str, Any]:
        """Return the checkpoint as plain dicts, lists, numbers, strings and tensors."""
        payload: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "config":
                value = value.to_dict()
            elif f.name == "state_dict":
                value = {k: v.detach().cpu().clone() for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            payload[f.name] = value
        payload["torch_version"] = str(torch.__version__)  # a str subclass the loader refuses
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Checkpoint:
        """Rebuild a checkpoint from :meth:`to_payload` output, checking it.

        Raises
        ------
        ValueError
            On a version mismatch, missing fields, a config this code cannot build,
            statistics of the wrong length, or weights that do not fit the config.
        """
        version = payload.get("version")
        if version != FOUNDATION_VERSION:
            raise ValueError(
                f"foundation checkpoint version {version!r} does not match this code's "
                f"version {FOUNDATION_VERSION}; retrain it with train_foundation"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in payload]
        if missing:
            raise ValueError(f"foundation checkpoint is missing field(s): {', '.join(missing)}")
        config = payload["config"]
        if not isinstance(config, Mapping):
            raise ValueError("foundation checkpoint config is not a dict")
        values = {n: payload[n] for n in names}
        values["config"] = FoundationConfig.from_dict(config)
        for name in ("feature_mean", "feature_std", "symbols"):
            values[name] = tuple(values[name])
        for name in ("feature_mean", "feature_std"):
            if len(values[name]) != N_FEATURES:
                raise ValueError(
                    f"foundation checkpoint {name} has {len(values[name])} values, "
                    f"expected {N_FEATURES} ({', '.join(FEATURE_NAMES)})"
                )
        if not all(s > 0 for s in values["feature_std"]) or not values["vol_std"] > 0:
            raise ValueError("foundation checkpoint has a non-positive standard deviation")
        ckpt = cls(**values)
        build_model(ckpt)  # the weights must fit the config
        return ckpt


def build_model(ckpt: Checkpoint) -> FoundationModel:
    model = FoundationModel(ckpt.config)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"foundation checkpoint weights do not fit its config: {exc}") from None
    return model.eval()


# -- INFERENCE --


class FoundationRegime:
    """Streaming regime probabilities and forward volatility for N symbols.

    Keeps a ring buffer of the last ``seq_len`` standardised feature rows of each symbol
    and, after each bar time, runs the model once on every updated symbol that is
    ``ready``. Only past bars ever enter a window.

    Parameters
    ----------
    checkpoint
        A trained checkpoint.
    n_symbols
        Number of symbols N.

    Attributes
    ----------
    probabilities
        float32 (N, 4): softmax of the regime logits in :data:`REGIME_NAMES` order;
        0.25 each until the symbol is ready.
    forward_vol
        float64 (N,): predicted realised volatility per bar (standard deviation of log
        returns) over the next ``horizon`` bars; NaN until ready.
    codes
        uint8 (N,): argmax of ``probabilities``, or ``REGIME_UNKNOWN`` until ready.

    Notes
    -----
    Torch uses the process's thread count; call ``torch.set_num_threads(1)`` in the
    process (``import sovereign`` before torch already makes it 1 via OMP_NUM_THREADS).
    """

    name = "foundation"

    def __init__(self, checkpoint: Checkpoint, n_symbols: int) -> None:
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.n = n_symbols
        self.model = build_model(checkpoint)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._mean = np.asarray(checkpoint.feature_mean)
        self._std = np.asarray(checkpoint.feature_std)
        self._steps = np.arange(self.config.seq_len)
        self.reset()

    def reset(self) -> None:
        """Forget every bar seen."""
        n, cfg = self.n, self.config
        self.features = FeatureState(n, vol_span=cfg.vol_span, volume_span=cfg.volume_span)
        self._ring = np.zeros((n, cfg.seq_len, N_FEATURES), dtype=np.float32)
        self._count = np.zeros(n, dtype=np.int64)
        self.probabilities = np.full((n, N_REGIMES), 1.0 / N_REGIMES, dtype=np.float32)
        self.forward_vol = np.full(n, np.nan)
        self.codes = np.full(n, REGIME_UNKNOWN, dtype=np.uint8)

    @property
    def ready(self) -> np.ndarray:
        """bool (N,): the symbol has at least ``seq_len`` bars."""
        return self._count >= self.config.seq_len

    def update(self, mask: np.ndarray, close: np.ndarray, volume: np.ndarray | None = None) -> None:
        """Consume one bar time; symbols masked out (or with a bad close) keep their state.

        Parameters
        ----------
        mask
            bool (N,): True where the symbol has a bar now.
        close
            float64 (N,).
        volume
            float64 (N,); NaN or negative means unknown. None means all unknown.
        """
        window = self.prepare(mask, close, volume)
        if window is not None:
            run, x = window
            self.apply(run, *self.infer(x))

    def prepare(
        self, mask: np.ndarray, close: np.ndarray, volume: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The first half of :meth:`update`: take the bar into the features and return the
        symbols to run the model on and their windows (None: none is ready). Several
        universes' windows can then go through the model in one call (:meth:`infer`), each
        handed back with :meth:`apply`: per bar, the model's fixed cost is paid once."""
        raw = self.features.update(mask, close, volume)
        rows = np.flatnonzero(~np.isnan(raw[:, RET_COLUMN]))
        if rows.size == 0:
            return None
        z = standardize(raw[rows], self._mean, self._std, self.config.feature_clip)
        length = self.config.seq_len
        self._ring[rows, self._count[rows] % length] = z
        self._count[rows] += 1
        run = rows[self._count[rows] >= length]
        if run.size == 0:
            return None
        # Oldest first: the next write slot holds the oldest row of a full ring.
        slots = (self._count[run, None] + self._steps[None, :]) % length
        return run, self._ring[run[:, None], slots]

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardised forward log vol (B,) and regime probabilities (B, 4) of windows
        (B, seq_len, F)."""
        with torch.inference_mode():
            _, vol, logits = self.model(torch.from_numpy(x))
            return vol.numpy(), torch.softmax(logits, dim=-1).numpy()

    def apply(self, run: np.ndarray, vol: np.ndarray, probs: np.ndarray) -> None:
        """The second half of :meth:`update`: the model's outputs for the symbols ``run``."""
        self.probabilities[run] = probs
        self.forward_vol[run] = np.exp(
            vol.astype(np.float64) * self.checkpoint.vol_std + self.checkpoint.vol_mean
        )
        self.codes[run] = probs.argmax(axis=1).astype(np.uint8)
