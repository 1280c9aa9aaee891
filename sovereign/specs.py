"""The actor graph of a session as specs, and the broker connections behind it.

``build_specs`` says how to build every actor of a session (its class and constructor
arguments, picklable for Ray); the broker factories, account ids and live feeds are the
parts of it that reach the outside world. ``sovereign.engine`` runs the graph.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sovereign.actors.gateway import GatewayActor
from sovereign.actors.guardian import GuardianActor
from sovereign.actors.monitor import MonitorActor
from sovereign.actors.operator import OperatorActor
from sovereign.actors.regime import RegimeActor
from sovereign.actors.runtime import (
    ActorSpec,
)
from sovereign.actors.selfmod import SelfModActor
from sovereign.actors.shard import ShardActor
from sovereign.brokers.sim import SimBroker
from sovereign.config import Config
from sovereign.core.constitution import Constitution
from sovereign.core.risk import SizingPolicy
from sovereign.core.shadow import ShadowCosts
from sovereign.data.feeds import deal_symbols
from sovereign.domain.service_settings import NOTIFICATION_KINDS
from sovereign.memory.account import sim_account_key
from sovereign.memory.checkpoints import Checkpoints
from sovereign.memory.stores import Stores

log = logging.getLogger("sovereign.engine")


def ib_settings(config: Config, *, data: bool = False) -> Any:
    from sovereign.brokers.ib import IBSettings

    ib = config.ib
    return IBSettings(
        host=ib.host,
        port=ib.port,
        client_id=ib.data_client_id if data else ib.client_id,
        account=ib.account,
        connect_timeout_s=ib.connect_timeout_s,
        max_requests=ib.max_requests,
        historical_pacing=ib.historical_pacing,
        backoff_initial_s=ib.reconnect_initial_s,
        backoff_max_s=ib.reconnect_max_s,
    )


def alpaca_settings(config: Config) -> Any:
    from sovereign.brokers.alpaca import AlpacaSettings

    base = AlpacaSettings.from_env(paper=config.alpaca.paper)
    return AlpacaSettings(
        paper=base.paper,
        base_url=base.base_url,
        data_url=base.data_url,
        stream_url=base.stream_url,
        feed=config.alpaca.feed,
    )


def make_broker_factory(config: Config, position_cap: float) -> Callable[[], Any]:
    """A picklable factory: the broker is built inside the gateway actor's process."""
    kind = config.broker.kind
    if kind == "sim":
        return functools.partial(
            SimBroker, config.sim, config.engine.initial_capital, position_cap=position_cap
        )
    if kind == "ib":
        from sovereign.brokers.ib import IBBroker

        return functools.partial(IBBroker, ib_settings(config))
    if kind == "alpaca":
        from sovereign.brokers.alpaca import AlpacaBroker

        return functools.partial(AlpacaBroker, alpaca_settings(config))
    return functools.partial(
        _failover, ib_settings(config), alpaca_settings(config), config.broker.failover_after_s
    )


class BrokerAccountError(RuntimeError):
    """The broker's account cannot be identified (unreachable, or ambiguous)."""


def broker_account_id(config: Config) -> str:
    """The identity of the broker account a live session would trade, as the broker
    reports it: ``ib:<account>`` (IB's managed account; ``[ib] account`` picks one of
    several), ``alpaca:<account number>``, or both for ``ib+alpaca``. A real account's
    trading state belongs to this identity, whatever the session is called."""
    kind = config.broker.kind
    parts: list[str] = []
    if kind in ("ib", "ib+alpaca"):
        parts.append(f"ib:{_ib_account(config)}")
    if kind in ("alpaca", "ib+alpaca"):
        parts.append(f"alpaca:{_alpaca_account(config)}")
    if not parts:
        raise BrokerAccountError(f"the {kind} broker has no account of its own")
    return "+".join(parts)


def _ib_account(config: Config) -> str:
    from ib_async import IB

    ib = IB()
    settings = ib_settings(config)
    try:
        # The order connection's client id: the gateway takes it over right after.
        ib.connect(
            settings.host,
            settings.port,
            clientId=settings.client_id,
            timeout=settings.connect_timeout_s,
            readonly=True,
        )
        managed = [a for a in ib.managedAccounts() if a]
    except Exception as exc:
        if settings.account:
            # Declared by the operator: the gateway trades that account once IB is up.
            log.warning("IB unreachable (%r); the account is [ib] account", exc)
            return settings.account
        raise BrokerAccountError(
            f"cannot reach IB at {settings.host}:{settings.port} to identify the account "
            f"({exc!r}); name it with [ib] account to start without IB"
        ) from None
    finally:
        ib.disconnect()
    if settings.account:
        if settings.account not in managed:
            raise BrokerAccountError(
                f"[ib] account {settings.account!r} is not one of the login's accounts "
                f"({', '.join(managed) or 'none'})"
            )
        return settings.account
    if len(managed) != 1:
        raise BrokerAccountError(
            f"the IB login manages {len(managed)} accounts ({', '.join(managed) or 'none'}): "
            "name the one to trade with [ib] account"
        )
    return managed[0]


def _alpaca_account(config: Config) -> str:
    from alpaca.trading.client import TradingClient

    settings = alpaca_settings(config)
    try:
        key, secret = settings.keys()
        client = TradingClient(
            key, secret, paper=settings.paper, url_override=settings.base_url or None
        )
        account = client.get_account()
    except Exception as exc:
        raise BrokerAccountError(f"cannot identify the Alpaca account: {exc}") from None
    number = str(getattr(account, "account_number", "") or getattr(account, "id", ""))
    if not number:
        raise BrokerAccountError("Alpaca reported an account without a number")
    return number


def _failover(ib: Any, alpaca: Any, after_s: float) -> Any:
    from sovereign.brokers.alpaca import AlpacaBroker
    from sovereign.brokers.failover import FailoverBroker
    from sovereign.brokers.ib import IBBroker

    return FailoverBroker(IBBroker(ib), AlpacaBroker(alpaca), failover_after_s=after_s)


def make_live_feed(config: Config, symbols: list[str]) -> Any:
    """The feed of a live session on ``config.broker.kind``: polled, or streamed."""
    from sovereign.data.live import FailoverBarSource, PollingFeed, StreamingFeed

    kind = config.broker.kind
    interval = config.broker.bar_interval_s
    if config.broker.feed == "stream":
        shards = deal_symbols(symbols, config.engine.shards)
        if kind == "ib":
            from sovereign.brokers.ib_bars import IBStreamSource

            stream: Any = IBStreamSource(
                ib_settings(config, data=True),
                symbols,
                interval,
                what_to_show=config.ib.what_to_show,
                use_rth=config.ib.use_rth,
                warmup_bars=config.broker.warmup_bars,
            )
        elif kind == "alpaca":
            from sovereign.brokers.alpaca import AlpacaStreamSource

            stream = AlpacaStreamSource(
                alpaca_settings(config), symbols, interval, warmup_bars=config.broker.warmup_bars
            )
        else:
            raise ValueError("streaming bars need one broker (ib or alpaca); ib+alpaca polls")
        return StreamingFeed(stream, shards, interval, grace_s=config.broker.stream_grace_s)
    sources = []
    if kind in ("ib", "ib+alpaca"):
        from sovereign.brokers.ib_bars import IBBarSource

        sources.append(
            IBBarSource(
                ib_settings(config, data=True),
                interval,
                what_to_show=config.ib.what_to_show,
                use_rth=config.ib.use_rth,
                warmup_bars=config.broker.warmup_bars,
            )
        )
    if kind in ("alpaca", "ib+alpaca"):
        from sovereign.brokers.alpaca import AlpacaBarSource

        sources.append(
            AlpacaBarSource(
                alpaca_settings(config), interval, warmup_bars=config.broker.warmup_bars
            )
        )
    source = sources[0] if len(sources) == 1 else FailoverBarSource(sources[0], sources[1])
    return PollingFeed(
        source,
        deal_symbols(symbols, config.engine.shards),
        interval,
        poll_interval_s=config.broker.poll_interval_s,
    )


def state_scope(config: Config, run_id: str) -> str:
    """Whose guardian state this is: a named account's, or this run's alone."""
    return f"account/{config.engine.account}" if config.engine.account else f"run/{run_id}"


def build_specs(
    config: Config,
    shard_symbols: list[list[str]],
    state_dir: Path,
    secret: bytes,
    *,
    run_id: str,
    notify_fills: bool = False,
    daily_summary: bool = False,
    audit_key: bytes | None = None,
    checkpoints: Checkpoints | None = None,
    replay_window: int = 0,
) -> dict[str, Any]:
    """The actor graph as specs (role -> spec or list of specs). ``audit_key`` seals the
    account's safety state and keys the audit log (None: each actor reads it from the
    state directory). ``checkpoints`` (paper and live sessions): where the shards and the
    gateway keep the checkpoints they are restored from after a crash; ``replay_window``:
    how many of its calls' order events the gateway sends again with each output."""
    constitution = config.build_constitution()
    policy = SizingPolicy(
        volatile_scale=config.risk.volatile_scale,
        max_gross_exposure=config.risk.max_gross_exposure,
        entry_limit_buffer=config.risk.entry_limit_buffer,
    )
    broker_factory = make_broker_factory(config, constitution.max_position_size)
    shard_of = {s: i for i, symbols in enumerate(shard_symbols) for s in symbols}
    account = config.engine.account
    # Every actor that keeps state is handed where it lives (it opens nothing by path).
    stores = Stores(str(state_dir), config.state.redis_url, audit_key)
    return {
        "shards": _shard_specs(
            config, shard_symbols, stores, constitution, policy, replay_window, checkpoints
        ),
        "regime": ActorSpec(
            RegimeActor, kwargs={"shard_symbols": shard_symbols, "config": config.regime}
        ),
        "guardian": ActorSpec(
            GuardianActor,
            kwargs={
                "constitution": constitution,
                "policy": policy,
                "secret": secret,
                "approval_ttl_s": config.engine.approval_ttl_s,
                "stores": stores,
                "state_scope": state_scope(config, run_id),
                "shard_of": shard_of,
                "flatten_on_halt": config.risk.flatten_on_halt,
                "review_after_losses": config.risk.review_after_losses,
            },
        ),
        "gateway": ActorSpec(
            GatewayActor,
            kwargs={
                "broker_factory": broker_factory,
                "secret": secret,
                "stores": stores,
                "account_key": sim_account_key(account) if account else "",
                "replay_window": replay_window,
            },
            checkpoints=checkpoints,
        ),
        "selfmod": _selfmod_spec(config, stores, run_id),
        "monitor": ActorSpec(MonitorActor),
        "operator": ActorSpec(
            OperatorActor,
            kwargs={
                "notify_fills": notify_fills or config.notifications.wants("fill"),
                "daily_summary": daily_summary,
                "muted": sorted(k for k in NOTIFICATION_KINDS if not config.notifications.wants(k)),
            },
        ),
    }


def _shard_specs(
    config: Config,
    shard_symbols: list[list[str]],
    stores: Stores,
    constitution: Constitution,
    policy: SizingPolicy,
    replay_window: int,
    checkpoints: Checkpoints | None,
) -> list[ActorSpec]:
    """One shard actor per group of symbols, spread over the cluster."""
    account = config.engine.account
    return [
        ActorSpec(
            ShardActor,
            index=i,
            kwargs={
                "symbols": symbols,
                "strategy": config.strategy,
                "stores": stores,
                "account": account,
                "replay_window": replay_window,
                # Self-modification learns from the trades its rules prevent.
                "shadow": ShadowCosts(constitution, policy, config.sim)
                if config.selfmod.enabled
                else None,
                # A real broker's positions may be the owner's own: never sold unasked.
                "adopt_carried": bool(account) and config.broker.kind == "sim",
                # What the simulated broker fills at, for the chunks' speculation.
                "fill_model": config.sim if config.broker.kind == "sim" else None,
            },
            spread=True,
            checkpoints=checkpoints,
        )
        for i, symbols in enumerate(shard_symbols)
    ]


def _selfmod_spec(config: Config, stores: Stores, run_id: str) -> ActorSpec:
    """The self-modification actor, with the settings of ``[selfmod]``."""
    return ActorSpec(
        SelfModActor,
        kwargs={
            "stores": stores,
            "scope": state_scope(config, run_id),
            "enabled": config.selfmod.enabled,
            "min_trades": config.selfmod.min_trades,
            "alpha": config.selfmod.alpha,
            "look_growth": config.selfmod.look_growth,
            "confirm_trades": config.selfmod.confirm_trades,
            "min_new_trades": config.selfmod.min_new_trades,
            "max_proposals": config.selfmod.max_proposals,
        },
    )
