"""``sovereign eval regime``: do the regime labels mean anything on real data?

The models run over the data exactly as the RegimeActor runs them — bar by bar, causal —
and each regime is described by the bars labelled with it: the annualised standard
deviation (``realized_vol``) and mean (``drift``) of those bars' log returns, which is what
the label says about the market it names (Volatile should show markedly higher
volatility, the trending regimes drift of their sign). The same statistics of the *next*
bar's return (``forward_realized_vol``, ``forward_drift``) say how much the label tells
about what comes after it — a much harder test. ``drift_se`` is the standard error of the
annualised drift: on daily data it is several percentage points, so small differences in
drift between regimes are noise. Also reported: how often labels change
(``flicker_per_100``, label changes per 100 bars per symbol), how often the HMM's and the
foundation model's most probable regimes agree, and a backtest of the default strategy
with the real regimes against the same backtest with the baseline classifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from sovereign.config import Config
from sovereign.core.metrics import infer_periods_per_year
from sovereign.core.regime import BaselineRegimeClassifier, HmmRegimeModel, Hysteresis
from sovereign.data.feeds import ReplayFeed
from sovereign.data.loaders import LoadedData
from sovereign.messages import REGIME_NAMES

UNKNOWN = 255


def _label_stats(
    codes: np.ndarray, same: np.ndarray, forward: np.ndarray, per_year: float
) -> dict[str, Any]:
    labelled = codes != UNKNOWN
    total = int(labelled.sum())
    out: dict[str, Any] = {}

    def vol(r: np.ndarray) -> float | None:
        return float(r.std(ddof=1) * np.sqrt(per_year)) if r.size > 1 else None

    def drift(r: np.ndarray) -> float | None:
        return float(r.mean() * per_year) if r.size else None

    for k, name in enumerate(REGIME_NAMES):
        sel = labelled & (codes == k)
        now = same[sel & np.isfinite(same)]
        nxt = forward[sel & np.isfinite(forward)]
        out[name] = {
            "bars": int(sel.sum()),
            "share": int(sel.sum()) / total if total else 0.0,
            "realized_vol": vol(now),
            "drift": drift(now),
            "drift_se": float(now.std(ddof=1) * per_year / np.sqrt(now.size))
            if now.size > 1
            else None,
            "forward_realized_vol": vol(nxt),
            "forward_drift": drift(nxt),
        }
    return out


def _flicker(codes: np.ndarray) -> float:
    prev, cur = codes[:-1], codes[1:]
    both = (prev != UNKNOWN) & (cur != UNKNOWN)
    changes = int(((prev != cur) & both).sum())
    bars = int((codes != UNKNOWN).sum())
    return 100.0 * changes / bars if bars else 0.0


def run_models(data: LoadedData, config: Config) -> dict[str, np.ndarray]:
    """Labels and probabilities of every model for every bar, as the actor computes them."""
    from sovereign.actors.regime import load_foundation

    symbols = data.symbols
    feed = ReplayFeed(data.frame, [symbols], data.interval_s)
    present, arrays = feed.panel(0)
    close, volume = arrays["close"], arrays["volume"]
    t_count, n = close.shape
    rc = config.regime
    hmm = HmmRegimeModel(
        n,
        window=rc.hmm_window,
        min_bars=rc.hmm_min_bars,
        refit_every=rc.hmm_refit_every,
        n_iter=rc.hmm_iter,
    )
    checkpoint = load_foundation(rc.foundation_checkpoint) if rc.model == "blend" else None
    if checkpoint is not None and checkpoint.interval_s not in (0, data.interval_s):
        checkpoint = None  # trained on bars of another length (see the RegimeActor)
    foundation = None
    if checkpoint is not None:
        from sovereign.core.foundation import FoundationRegime

        foundation = FoundationRegime(checkpoint, n)
    baseline = BaselineRegimeClassifier(n, rc)
    hyst = Hysteresis(n, min_dwell=rc.min_dwell, strong=rc.strong_probability)
    shape = (t_count, n)
    out = {
        "close": close,
        "blend": np.full(shape, UNKNOWN, np.uint8),
        "hmm": np.full(shape, UNKNOWN, np.uint8),
        "foundation": np.full(shape, UNKNOWN, np.uint8),
        "baseline": np.full(shape, UNKNOWN, np.uint8),
    }
    w = rc.foundation_weight
    for t in range(t_count):
        mask = present[t]
        hmm.update(mask, close[t])
        probs = hmm.probabilities.copy()
        ready = hmm.ready.copy()
        out["hmm"][t] = np.where(hmm.ready, hmm.probabilities.argmax(axis=1), UNKNOWN)
        if foundation is not None:
            foundation.update(mask, close[t], volume[t])
            pf, rf = foundation.probabilities.astype(np.float64), foundation.ready
            out["foundation"][t] = np.where(rf, pf.argmax(axis=1), UNKNOWN)
            both = ready & rf
            probs = np.where(both[:, None], (1 - w) * probs + w * pf, probs)
            probs[rf & ~ready] = pf[rf & ~ready]
            ready = ready | rf
        out["blend"][t] = hyst.update(mask, probs, ready)
        baseline.update(mask, close[t])
        out["baseline"][t] = baseline.codes
        # Bars a symbol does not have are not labelled.
        for key in ("blend", "hmm", "foundation", "baseline"):
            out[key][t, ~mask] = UNKNOWN
    out["has_foundation"] = np.array(foundation is not None)
    out["ts"] = feed.timestamps
    return out


def evaluate_regimes(
    data: LoadedData,
    config: Config,
    *,
    state_dir: str | Path,
    backtest: bool = True,
) -> dict[str, Any]:
    models = run_models(data, config)
    close = models["close"]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.log(close[1:] / close[:-1])
    same = np.full_like(close, np.nan)
    same[1:] = r  # the labelled bar's own return
    forward = np.full_like(close, np.nan)
    forward[:-1] = r  # the return of the bar after the labelled one
    per_year = infer_periods_per_year(models["ts"])
    has_fm = bool(models["has_foundation"])
    hmm_codes, fm_codes = models["hmm"], models["foundation"]
    both = (hmm_codes != UNKNOWN) & (fm_codes != UNKNOWN)
    result: dict[str, Any] = {
        "data": data.source,
        "symbols": data.symbols,
        "bars": int((models["blend"] != UNKNOWN).sum()),
        "model": config.regime.model if has_fm else "hmm",
        "regimes": _label_stats(models["blend"], same, forward, per_year),
        "flicker_per_100": _flicker(models["blend"]),
        "hmm_foundation_agreement": float((hmm_codes[both] == fm_codes[both]).mean())
        if has_fm and both.any()
        else None,
        "by_model": {
            name: {
                "regimes": _label_stats(models[name], same, forward, per_year),
                "flicker_per_100": _flicker(models[name]),
            }
            for name in ("hmm", "foundation", "baseline")
            if name != "foundation" or has_fm
        },
        "unconditional": {
            "realized_vol": float(np.nanstd(same) * np.sqrt(per_year)),
            "drift": float(np.nanmean(same) * per_year),
        },
        "annualisation_periods": per_year,
    }
    if backtest:
        result["backtest"] = _backtests(data, config, state_dir)
    return result


def _backtests(data: LoadedData, config: Config, state_dir: str | Path) -> dict[str, Any]:
    from sovereign.session import run_session

    keys = ("total_trades", "win_rate", "total_return", "sharpe", "max_drawdown", "profit_factor")
    out: dict[str, Any] = {}
    plain = msgspec.structs.replace(
        config, selfmod=msgspec.structs.replace(config.selfmod, enabled=False)
    )
    for label, model in (("real_regimes", config.regime.model), ("baseline", "baseline")):
        cfg = msgspec.structs.replace(
            plain, regime=msgspec.structs.replace(plain.regime, model=model)
        )
        session = run_session(
            cfg,
            data,
            runtime="local",
            mode="backtest",
            state_dir=state_dir,
            out_dir=None,
            run_id=f"regime-eval-{label}",
        )
        out[label] = {k: session.metrics.get(k) for k in keys}
    return out


def write_eval(out_dir: str | Path, result: dict[str, Any]) -> tuple[Path, Path]:
    """``regime_eval.json`` and a readable ``regime_eval.md`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "regime_eval.json"
    json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    md_path = out / "regime_eval.md"
    md_path.write_text(render_markdown(result))
    return json_path, md_path


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def render_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Regime evaluation: {result['data']}",
        "",
        f"Model: {result['model']}; {result['bars']:,} labelled bars; "
        f"{len(result['symbols'])} symbols. Annualised log-return volatility and drift of "
        "the labelled bars, and of the bar after each (forward).",
        "",
        "| regime | share | realised vol | drift (± s.e.) | forward vol | forward drift |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["regimes"].items():
        se = "" if s["drift_se"] is None else f" ± {_pct(s['drift_se'])}"
        lines.append(
            f"| {name} | {_pct(s['share'])} | {_pct(s['realized_vol'])} | "
            f"{_pct(s['drift'])}{se} | {_pct(s['forward_realized_vol'])} | "
            f"{_pct(s['forward_drift'])} |"
        )
    u = result["unconditional"]
    agreement = result["hmm_foundation_agreement"]
    lines += [
        f"| all bars | 100% | {_pct(u['realized_vol'])} | {_pct(u['drift'])} | | |",
        "",
        f"Flicker: {result['flicker_per_100']:.2f} label changes per 100 bars.",
        "HMM / foundation agreement: " + ("—" if agreement is None else f"{agreement:.1%} of bars"),
        "",
    ]
    for name, m in result["by_model"].items():
        stats = ", ".join(
            f"{k} vol {_pct(v['realized_vol'])} drift {_pct(v['drift'])}"
            for k, v in m["regimes"].items()
            if v["bars"]
        )
        lines.append(f"- {name}: flicker {m['flicker_per_100']:.2f}/100 bars; {stats}")
    if "backtest" in result:
        b = result["backtest"]
        lines += [
            "",
            "| backtest | trades | win rate | return | Sharpe | max drawdown |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, m in b.items():
            sharpe = "—" if m["sharpe"] is None else f"{m['sharpe']:.2f}"
            lines.append(
                f"| {label} | {m['total_trades']} | {_pct(m['win_rate'])} | "
                f"{_pct(m['total_return'])} | {sharpe} | {_pct(m['max_drawdown'])} |"
            )
    return "\n".join(lines) + "\n"
