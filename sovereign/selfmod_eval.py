"""``sovereign eval selfmod``: does self-modification help on data it has not seen?

For each data set, the same backtest twice on the local runtime, each on a fresh state:
self-modification on and off. Every figure of the on run after its first deployment is
out of sample for the loop (a rule is only ever applied to trades after it was deployed).
Reported per run: trades, total P&L, Sharpe, maximum drawdown, and the same per symbol;
the rules deployed, retired, relaxed and rejected; for each rule deployed, its record
after deployment — the trades it acted on (its shadow record: what a skipped trade would
have made, or the part of a scaled trade not bought) against the trades it kept; and the
P&L of both runs from the first deployment on (before it the two runs are the same run).

Placebo (``--placebo N``): the off run's trades with their outcomes (P&L and return,
together) permuted among them with seeds 0..N-1, so that no slice differs from the rest,
replayed through the self-modification engine in the order they closed — analysed at each
new session date and after every ``review_after_losses`` losses in a row, as the actor is —
with the constitutional check standing in for the guardian. Reported: the fraction of
seeds in which any rule would be deployed. For that question the replay is exact: until its
first deployment an on run trades exactly as the off run.

Overfitting (methods named in the output):

* ``pbo``: the probability of backtest overfitting by combinatorially symmetric
  cross-validation (Bailey, Borwein, López de Prado and Zhu, 2017) over the configurations
  the loop chose among: the strategy alone and the strategy with each candidate rule found
  at any look of the replay (deployed or not), applied to the off run's trades (a skip
  removes its slice's trades, a size cut scales them), as P&L per session day. The days
  are cut into ``S`` blocks; for every half of the blocks the configuration with the best
  daily Sharpe ratio there is ranked among all on the other half; PBO is the share of
  splits where it ranks in the lower half.
* ``deflated_sharpe``: the deflated Sharpe ratio (Bailey and López de Prado, 2014) of the
  on run's daily P&L: the probability that its Sharpe ratio beats the best of ``N``
  unskilled trials, ``N`` being the configurations above and the variance of their daily
  Sharpe ratios the trials' dispersion, corrected for the skewness and kurtosis of the P&L.

Both are our own code (a few lines each on scipy's normal distribution): no maintained
package on the index implements them.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from scipy import stats

from sovereign.config import Config
from sovereign.core.calendar import session_date
from sovereign.core.codegen import eval_condition
from sovereign.core.selfmod import (
    DailyChanges,
    EvidenceTrade,
    check_proposal,
    evidence_trade,
)
from sovereign.core.selfmod_engine import SelfModEngine
from sovereign.core.weakness import TradeSample, Weakness
from sovereign.data.loaders import LoadedData
from sovereign.domain.rules import ScaleSize
from sovereign.memory.governance import DEPLOYED, REJECTED, ROLLED_BACK, GovernanceStore
from sovereign.memory.trade_memory import TradeMemory

EULER_GAMMA = 0.5772156649015329
CSCV_BLOCKS = 16


# -- THE TWO RUNS -------------------------------------------------------------------------


def _run(config: Config, data: LoadedData, state_dir: Path, run_id: str, *, on: bool) -> Any:
    from sovereign.session import run_session

    config = msgspec.structs.replace(
        config,
        selfmod=msgspec.structs.replace(config.selfmod, enabled=on, compare_without_rules=False),
        # Each run on its own scope: an evaluation never touches a named account.
        engine=msgspec.structs.replace(config.engine, account=""),
    )
    return run_session(
        config,
        data,
        runtime="local",
        mode="backtest",
        state_dir=state_dir,
        out_dir=None,
        run_id=run_id,
    )


def _summary(output: Any) -> dict[str, Any]:
    m = output.metrics
    trades: pd.DataFrame = output.trades
    per_symbol = (
        {
            str(symbol): {"trades": len(g), "pnl": float(g["pnl"].sum())}
            for symbol, g in trades.groupby("symbol")
        }
        if not trades.empty
        else {}
    )
    return {
        "trades": int(m.get("total_trades") or 0),
        "pnl": float(m.get("total_pnl") or 0.0),
        "sharpe": m.get("sharpe"),
        "max_drawdown": m.get("max_drawdown"),
        "per_symbol": per_symbol,
    }


def rule_records(
    deployed: list[Any], trades: pd.DataFrame, shadow: pd.DataFrame
) -> list[dict[str, Any]]:
    """Each rule a run deployed (``deployed``: its governance records, oldest first) with
    its record after deployment: the trades it acted on (its shadow record: ``shadow`` is
    trade memory's ``shadow_frame``) against the trades it kept (``trades``)."""
    acting = (
        trades["f_rules_acting"].fillna("").astype(str)
        if "f_rules_acting" in trades
        else pd.Series([""] * len(trades), index=trades.index, dtype=str)
    )
    ended: dict[str, int] = {}
    for r in deployed:
        if r.summary.startswith(("remove ", "replace ")):
            ended[r.summary.split()[1].rstrip(":")] = r.ts_ns
    records = []
    for r in deployed:
        if not r.summary.startswith(("add ", "replace ")):
            continue
        rule_id = r.summary.split(":")[0].split()[-1]
        mine = (
            shadow[shadow["rule_ids"].str.split(",").map(lambda ids, k=rule_id: k in ids)]
            if len(shadow)
            else shadow
        )
        acted = acting.str.split(",").map(lambda ids, k=rule_id: k in ids)
        end = ended.get(rule_id)
        after = trades["entry_ts"] >= r.ts_ns
        if end is not None:
            after &= trades["entry_ts"] < end
        kept = trades[after & ~acted]
        records.append(
            {
                "rule_id": rule_id,
                "rule": r.summary,
                "deployed": pd.Timestamp(r.ts_ns, tz="UTC").isoformat(),
                "retired": pd.Timestamp(end, tz="UTC").isoformat() if end is not None else None,
                "acted_on": len(mine),
                "acted_pnl": float(mine["pnl"].sum()) if len(mine) else 0.0,
                "acted_mean_return": float(mine["return_pct"].mean()) if len(mine) else None,
                "kept": len(kept),
                "kept_pnl": float(kept["pnl"].sum()),
                "kept_mean_return": float(kept["return_pct"].mean()) if len(kept) else None,
                # What the rule changed: the P&L of what it prevented, with the sign turned.
                "effect": -float(mine["pnl"].sum()) if len(mine) else 0.0,
            }
        )
    return records


def _rules(state_dir: Path, scope: str, output: Any, shadow: pd.DataFrame) -> dict[str, Any]:
    with GovernanceStore(state_dir) as store:
        history = sorted(store.history(scope, limit=100_000), key=lambda r: r.id)
    deployed = [r for r in history if r.status in (DEPLOYED, ROLLED_BACK)]
    return {
        "deployed": sum(1 for r in deployed if r.summary.startswith("add ")),
        "retired": sum(1 for r in deployed if r.summary.startswith("remove ")),
        "relaxed": sum(1 for r in deployed if r.summary.startswith("replace ")),
        "rejected": sum(1 for r in history if r.status == REJECTED),
        "first_deployment": deployed[0].ts_ns if deployed else None,
        "records": rule_records(deployed, output.trades, shadow),
    }


def _same_run(a: Any, b: Any) -> bool:
    """The same trades at the same prices and the same equity curve."""
    cols = ["trade_id", "symbol", "entry_ts", "exit_ts", "entry_price", "exit_price", "pnl"]
    ta, tb = a.trades, b.trades
    if len(ta) != len(tb):
        return False
    if len(ta) and not ta[cols].reset_index(drop=True).equals(tb[cols].reset_index(drop=True)):
        return False
    return bool(np.array_equal(a.result.equity, b.result.equity))


# -- THE REPLAY (placebo and candidates) --------------------------------------------------


def _evidence_trades(trades: pd.DataFrame) -> list[EvidenceTrade]:
    features = [c for c in trades.columns if c.startswith("f_")]
    out = []
    for row in trades.itertuples(index=False):
        d = row._asdict()
        f = {
            c[2:]: d[c]
            for c in features
            if d[c] is not None and not (isinstance(d[c], float) and math.isnan(d[c]))
        }
        out.append(evidence_trade(_Row(d, f)))
    return out


class _Row:
    def __init__(self, d: dict[str, Any], features: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self.features = features


def replay(trades: list[EvidenceTrade], config: Config) -> tuple[list[str], list[Weakness]]:
    """The engine over a stream of closed trades, as the actor runs it (see the module
    docstring), with every change the constitution allows deployed at once. Returns the
    summaries of the changes deployed and every weakness found at a look."""
    sm = config.selfmod
    engine = SelfModEngine(
        min_trades=sm.min_trades,
        alpha=sm.alpha,
        look_growth=sm.look_growth,
        confirm_trades=sm.confirm_trades,
        min_new_trades=sm.min_new_trades,
        max_proposals=sm.max_proposals,
    )
    constitution = config.build_constitution()
    review = config.risk.review_after_losses
    found: dict[bytes, Weakness] = {}
    deployed: list[str] = []
    daily = DailyChanges()
    day = ""
    streak = 0

    def analyse(trigger: str, force: bool) -> None:
        for p in engine.analyse(trigger=trigger, session_date=day, ts=0, force=force):
            violations = check_proposal(p.change, constitution, engine.book, daily.today(day))
            engine.settle(p.proposal_id, not violations, violations)
            if not violations:
                engine.deployed(p)
                engine.book = engine.book.apply(p.change)
                daily.record(day)
                deployed.append(f"{p.change.kind} {p.change.rule_id}")
        for c in engine.candidates.values():
            found.setdefault(msgspec.msgpack.encode(c.weakness.condition), c.weakness)

    # As the actor: a losing streak asks for a review, which runs when the session changes.
    review_due = False
    for t in trades:
        d = session_date(t.exit_ts)
        if d != day:
            if day:
                day = d
                if review_due:
                    analyse("losing_streak", True)
                else:
                    analyse("end_of_day", False)
                review_due = False
            day = d
        engine.on_trade(t)
        streak = streak + 1 if t.pnl < 0 else 0
        if streak >= review:
            streak = 0
            review_due = True
    return deployed, list(found.values())


def placebo_rate(trades: list[EvidenceTrade], config: Config, seeds: int) -> dict[str, Any]:
    deploying = 0
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(len(trades))
        permuted = [
            msgspec.structs.replace(t, pnl=trades[j].pnl, return_pct=trades[j].return_pct)
            for t, j in zip(trades, order, strict=True)
        ]
        deployed, _ = replay(permuted, config)
        deploying += bool(deployed)
    return {
        "seeds": seeds,
        "runs_deploying": deploying,
        "fraction": deploying / seeds if seeds else None,
        "method": "outcomes permuted among the off run's trades, replayed through the engine",
    }


# -- OVERFITTING --------------------------------------------------------------------------


def _sharpe(x: np.ndarray) -> float:
    if x.size < 2:
        return 0.0
    sd = float(x.std(ddof=1))
    return float(x.mean()) / sd if sd > 0 else 0.0


def daily_pnl(exit_ts: np.ndarray, pnl: np.ndarray, days: list[str]) -> np.ndarray:
    """P&L summed by the session date the trades closed on, over ``days``."""
    index = {d: i for i, d in enumerate(days)}
    out = np.zeros(len(days))
    for ts, x in zip(exit_ts.tolist(), pnl.tolist(), strict=True):
        i = index.get(session_date(int(ts)))
        if i is not None and math.isfinite(x):
            out[i] += x
    return out


def configuration_matrix(
    trades: list[EvidenceTrade], candidates: list[Weakness], days: list[str]
) -> np.ndarray:
    """Daily P&L (rows: ``days``) of the strategy alone and with each candidate rule
    (columns), on the off run's trades: a skip takes its slice's P&L away, a size cut
    scales it."""
    from sovereign.core.weakness import weakness_to_rule

    pnl = np.array([t.pnl for t in trades], dtype=np.float64)
    exit_ts = np.array([t.exit_ts for t in trades], dtype=np.int64)
    columns = [pnl]
    if candidates and trades:
        features = TradeSample.from_records(trades).rule_features()
        for w in candidates:
            rule, _ = weakness_to_rule(w, rule_id="c", created_ts=0, provenance="")
            mask = eval_condition(w.condition, features)
            factor = rule.action.factor if isinstance(rule.action, ScaleSize) else 0.0
            columns.append(np.where(mask, pnl * factor, pnl))
    return np.column_stack([daily_pnl(exit_ts, c, days) for c in columns])


def pbo_cscv(matrix: np.ndarray, blocks: int = CSCV_BLOCKS) -> float | None:
    """The probability of backtest overfitting of choosing the best column of ``matrix``
    (rows in time order) by its Sharpe ratio: CSCV over ``blocks`` blocks."""
    t, n = matrix.shape
    if n < 2 or t < 2 * blocks:
        return None
    parts = np.array_split(np.arange(t), blocks)
    logits = []
    for train in itertools.combinations(range(blocks), blocks // 2):
        chosen = set(train)
        tr = np.concatenate([parts[i] for i in train])
        te = np.concatenate([parts[i] for i in range(blocks) if i not in chosen])
        sr_train = np.array([_sharpe(matrix[tr, j]) for j in range(n)])
        sr_test = np.array([_sharpe(matrix[te, j]) for j in range(n)])
        best = int(np.argmax(sr_train))
        rank = float(stats.rankdata(sr_test)[best])
        omega = rank / (n + 1)
        logits.append(math.log(omega / (1 - omega)))
    return float(np.mean(np.array(logits) <= 0))


def deflated_sharpe(returns: np.ndarray, trial_sharpes: np.ndarray) -> float | None:
    """The deflated Sharpe ratio of ``returns`` given the Sharpe ratios of the trials it
    was chosen among (all on the same per-observation basis)."""
    x = returns[np.isfinite(returns)]
    if x.size < 3:
        return None
    sr = _sharpe(x)
    n = int(trial_sharpes.size)
    var = float(trial_sharpes.var(ddof=1)) if n > 1 else 0.0
    if n > 1 and var > 0:
        z = stats.norm.ppf
        sr0 = math.sqrt(var) * (
            (1 - EULER_GAMMA) * z(1 - 1 / n) + EULER_GAMMA * z(1 - 1 / (n * math.e))
        )
    else:
        sr0 = 0.0
    if float(x.std(ddof=1)) == 0.0:
        return None  # no variation: no Sharpe ratio to deflate
    skew = float(stats.skew(x))
    kurt = float(stats.kurtosis(x, fisher=False))
    denom = 1 - skew * sr + (kurt - 1) / 4 * sr * sr
    if not (math.isfinite(denom) and denom > 0):
        return None
    return float(stats.norm.cdf((sr - sr0) * math.sqrt(x.size - 1) / math.sqrt(denom)))


# -- ONE DATA SET ---------------------------------------------------------------------------


def evaluate_selfmod(
    data: LoadedData, config: Config, *, label: str, placebo: int = 0, work_dir: Path
) -> dict[str, Any]:
    """Both runs, the placebo and the overfitting figures for one data set."""
    from sovereign.session import window_metrics

    state = Path(tempfile.mkdtemp(prefix="selfmod-eval-", dir=work_dir))
    try:
        on = _run(config, data, state / "on", "selfmod-on", on=True)
        off = _run(config, data, state / "off", "selfmod-off", on=False)
        shadow = TradeMemory(state / "on").shadow_frame(run_id="selfmod-on")
        rules = _rules(state / "on", "run/selfmod-on", on, shadow)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    capital = config.engine.initial_capital
    first = rules["first_deployment"]
    after: dict[str, Any] = {"from": None, "on_pnl": None, "off_pnl": None, "difference": None}
    if first is not None:
        on_w = window_metrics(on.result, on.trades, first, config)
        off_w = window_metrics(off.result, off.trades, first, config)
        on_pnl, off_pnl = float(on_w["total_pnl"] or 0.0), float(off_w["total_pnl"] or 0.0)
        after = {
            "from": pd.Timestamp(first, tz="UTC").isoformat(),
            "on_pnl": on_pnl,
            "off_pnl": off_pnl,
            "difference": on_pnl - off_pnl,
            "difference_pct_capital": (on_pnl - off_pnl) / capital,
        }
    stream = _evidence_trades(off.trades)
    _, candidates = replay(stream, config)
    # Every figure on one basis: P&L per session day, over the days of the data.
    days = sorted({session_date(int(t)) for t in np.asarray(on.result.ts)})
    matrix = configuration_matrix(stream, candidates, days)
    trial_sr = np.array([_sharpe(matrix[:, j]) for j in range(matrix.shape[1])])
    on_daily = daily_pnl(
        on.trades["exit_ts"].to_numpy(dtype=np.int64),
        on.trades["pnl"].to_numpy(dtype=np.float64),
        days,
    )
    result: dict[str, Any] = {
        "data": label,
        "source": data.source,
        "symbols": len(data.symbols),
        "on": _summary(on),
        "off": _summary(off),
        "identical": _same_run(on, off),
        "after_first_deployment": after,
        "rules": rules,
        "overfitting": {
            "configurations": int(matrix.shape[1]),
            "pbo": pbo_cscv(matrix),
            "pbo_method": f"CSCV, {CSCV_BLOCKS} blocks of days, daily Sharpe (Bailey et al. 2017)",
            "deflated_sharpe": deflated_sharpe(on_daily, trial_sr),
            "deflated_sharpe_method": "deflated Sharpe ratio of the on run's daily P&L, "
            "against the configurations' (Bailey and López de Prado 2014)",
        },
    }
    if placebo:
        result["placebo"] = placebo_rate(stream, config, placebo)
    return result


# -- OUTPUT -------------------------------------------------------------------------------


def write_eval(out_dir: str | Path, results: list[dict[str, Any]]) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "selfmod-eval.json"
    json_path.write_text(
        json.dumps(_finite(results), indent=2, sort_keys=True, default=str, allow_nan=False)
    )
    md_path = out / "selfmod-eval.md"
    md_path.write_text(render_markdown(results))
    return json_path, md_path


def _finite(x: Any) -> Any:
    """NaN and infinities as None: JSON has no such numbers."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _money(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None or not math.isfinite(float(x)) else format(float(x), fmt)


def render_markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| data | trades on / off | P&L on / off | Sharpe on / off | max DD on / off "
        "| deployed | retired | relaxed | rejected | P&L after 1st deployment on − off "
        "| identical | PBO | DSR | placebo |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        on, off, rules, after = r["on"], r["off"], r["rules"], r["after_first_deployment"]
        o = r["overfitting"]
        placebo = r.get("placebo")
        placebo_text = f"{placebo['runs_deploying']}/{placebo['seeds']}" if placebo else "—"
        lines.append(
            f"| {r['data']} | {on['trades']} / {off['trades']} "
            f"| {_money(on['pnl'])} / {_money(off['pnl'])} "
            f"| {_num(on['sharpe'])} / {_num(off['sharpe'])} "
            f"| {_num(on['max_drawdown'], '.1%')} / {_num(off['max_drawdown'], '.1%')} "
            f"| {rules['deployed']} | {rules['retired']} | {rules['relaxed']} "
            f"| {rules['rejected']} "
            f"| {_money(after['difference'])} "
            f"| {'yes' if r['identical'] else 'no'} "
            f"| {_num(o['pbo'])} | {_num(o['deflated_sharpe'])} "
            f"| {placebo_text} |"
        )
    for r in results:
        symbols = sorted(set(r["on"]["per_symbol"]) | set(r["off"]["per_symbol"]))
        if not symbols:
            continue
        lines += [
            "",
            f"Per symbol on {r['data']}:",
            "",
            "| symbol | trades on / off | P&L on / off |",
            "|---|---|---|",
        ]
        for sym in symbols:
            on_s = r["on"]["per_symbol"].get(sym, {"trades": 0, "pnl": 0.0})
            off_s = r["off"]["per_symbol"].get(sym, {"trades": 0, "pnl": 0.0})
            lines.append(
                f"| {sym} | {on_s['trades']} / {off_s['trades']} "
                f"| {_money(on_s['pnl'])} / {_money(off_s['pnl'])} |"
            )
    for r in results:
        records = r["rules"]["records"]
        if not records:
            continue
        lines += [
            "",
            f"Rules deployed on {r['data']} (their record after deployment):",
            "",
            "| rule | deployed | retired | acted on | its P&L | kept | their P&L | effect |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for x in records:
            lines.append(
                f"| {x['rule']} | {x['deployed'][:19]} | {(x['retired'] or '—')[:19]} "
                f"| {x['acted_on']} | {_money(x['acted_pnl'])} | {x['kept']} "
                f"| {_money(x['kept_pnl'])} | {_money(x['effect'])} |"
            )
    lines += [
        "",
        "P&L after the first deployment: both runs from that bar on (before it they are the "
        "same run). Effect of a rule: minus the P&L of the trades it acted on (its shadow "
        "record), i.e. what it saved. PBO: "
        + CSCV_METHOD
        + ". DSR: deflated Sharpe ratio of the on run's daily P&L. Placebo: runs "
        "deploying any rule with outcomes permuted.",
    ]
    return "\n".join(lines) + "\n"


CSCV_METHOD = "CSCV over the strategy with and without each candidate rule"
