"""Typed, validated configuration.

One frozen msgspec Struct per component, each forbidding unknown fields, so a typo in the
TOML file is a startup error naming the field instead of a silently ignored setting. The
file passed with ``--config`` has one table per component (``[engine]``, ``[strategy]``,
``[regime]``, ``[sim]``, ``[risk]``, ``[constitution]``, ``[data]``, ``[ray]``,
``[state]``, ``[selfmod]``, ``[broker]``, ``[ib]``, ``[alpaca]``, ``[telegram]``,
``[notifications]``); every key is
optional and defaults to the value documented on the Struct. The Structs themselves live in
``sovereign.domain.settings``; this module reads a file into them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from sovereign.core.constitution import Constitution, ConstitutionError
from sovereign.domain.service_settings import (
    AlpacaConfig,
    BrokerConfig,
    ConstitutionOverrides,
    IBConfig,
    NotificationsConfig,
    StateConfig,
    TelegramConfig,
)
from sovereign.domain.settings import (
    DataConfig,
    EngineConfig,
    RayConfig,
    RegimeConfig,
    RiskConfig,
    Section,
    SelfModConfig,
    SimConfig,
    StrategyConfig,
)


class ConfigError(ValueError):
    """A configuration file or value is invalid. The message names the field."""


class Config(Section, frozen=True):
    """The whole configuration."""

    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    strategy: StrategyConfig = msgspec.field(default_factory=StrategyConfig)
    regime: RegimeConfig = msgspec.field(default_factory=RegimeConfig)
    sim: SimConfig = msgspec.field(default_factory=SimConfig)
    risk: RiskConfig = msgspec.field(default_factory=RiskConfig)
    data: DataConfig = msgspec.field(default_factory=DataConfig)
    ray: RayConfig = msgspec.field(default_factory=RayConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    ib: IBConfig = msgspec.field(default_factory=IBConfig)
    alpaca: AlpacaConfig = msgspec.field(default_factory=AlpacaConfig)
    selfmod: SelfModConfig = msgspec.field(default_factory=SelfModConfig)
    telegram: TelegramConfig = msgspec.field(default_factory=TelegramConfig)
    notifications: NotificationsConfig = msgspec.field(default_factory=NotificationsConfig)
    constitution: ConstitutionOverrides = msgspec.field(default_factory=ConstitutionOverrides)

    def build_constitution(self) -> Constitution:
        """The constitution with this config's (stricter-only) overrides applied."""
        overrides = {
            k: v for k, v in msgspec.structs.asdict(self.constitution).items() if v is not None
        }
        try:
            return Constitution.default().tightened(**overrides)
        except ConstitutionError as exc:
            raise ConfigError(f"[constitution] {exc}") from None


def breakout_preset(config: Config) -> Config:
    """The benchmarks' peer-comparable strategy, through the whole pipeline.

    Long only, 100 shares; entry at the close of bar t when flat and nothing is pending, if
    close[t] > max(high[t-20..t-1]) and volume[t] > median(volume[t-20..t-1]); ATR(14) the
    simple mean of the last 14 true ranges, frozen at the signal bar; stop = fill - 1.5
    ATR, target = fill + 3 ATR; exit when low <= stop, high >= target or 50 bars held. Fills
    at the next bar's open with no slippage, commission or volume cap. The guardian still
    approves every order: entries go out as limit orders with a 50 % collar (so the
    approved notional bounds the fill; they fill at the open like market orders unless a
    bar gaps up by half), and the constitution's limits still apply — hence the large
    default capital, so that 100 shares never reach the 5 % position limit.
    """
    from sovereign.domain.regimes import REGIME_NAMES

    replace = msgspec.structs.replace
    capital = config.engine.initial_capital
    return replace(
        config,
        engine=replace(
            config.engine, initial_capital=max(capital, 1e9) if capital == 100_000.0 else capital
        ),
        strategy=replace(
            config.strategy,
            kind="breakout",
            fixed_quantity=100,
            breakout_window=20,
            volume_window=20,
            atr_period=14,
            stop_atr_mult=1.5,
            target_atr_mult=3.0,
            max_hold_bars=50,
            exit_on_regime_change=False,
            entry_regimes=tuple(REGIME_NAMES),
            per_regime={},
            entry_timeout_bars=1_000_000,
        ),
        regime=replace(config.regime, model="none"),
        sim=replace(
            config.sim,
            slippage_bps=0.0,
            commission_per_share=0.0,
            commission_min=0.0,
            commission_max_pct=0.0,
            max_volume_share=1.0,
        ),
        risk=replace(config.risk, entry_limit_buffer=0.5),
        selfmod=replace(config.selfmod, enabled=False),
    )


def parse_config(data: dict[str, Any], *, source: str = "config") -> Config:
    """Validate a mapping (as read from TOML) into a Config; errors name the field."""
    selfmod = data.get("selfmod")
    if isinstance(selfmod, dict) and "fdr" in selfmod:
        # Renamed when the loop's statistics changed: say so rather than "unknown field".
        raise ConfigError(
            f"{source}: [selfmod] fdr is no longer a setting: the error rate is now one "
            "budget per account spent across looks, [selfmod] alpha (default 0.05); see "
            "the README's Self-modification section"
        )
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_humanise(str(exc))}") from None
    config.build_constitution()  # a looser constitution value is a startup error
    return config


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML config file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(p))


def _humanise(message: str) -> str:
    # msgspec paths look like `$.engine.shards`; in a TOML file that is [engine] shards.
    return message.replace("`$.", "`").replace("- at `$`", "")
