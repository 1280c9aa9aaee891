"""The settings' types of the system's connections: brokers, state stores, Telegram and
notifications, and the constitution's (stricter-only) overrides. The trading settings are
in ``sovereign.domain.settings``."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from sovereign.domain.settings import Section, require_non_negative, require_positive


class BrokerConfig(Section, frozen=True):
    """Which broker a paper or live session trades through, and how its bars arrive.

    Parameters
    ----------
    kind
        ``sim`` (replayed data, the default), ``ib`` (TWS / IB Gateway), ``alpaca``, or
        ``ib+alpaca`` (IB, failing over to Alpaca).
    failover_after_s
        With ``ib+alpaca``: IB unreachable for this long sends new positions to Alpaca.
        Default 30.
    bar_interval_s
        Bar length of a live session, seconds. Default 60.
    poll_interval_s
        How often bars are polled (IB paper: MIDPOINT history). Default 60.
    watchlist
        The symbols of a live session (``--symbols`` overrides).
    warmup_bars
        History fetched when a live session starts, for the indicators and regimes to warm
        up on (it is not traded). Default 300.
    feed
        ``poll`` (default; what IB paper accounts need: MIDPOINT history polled every
        ``poll_interval_s``) or ``stream`` (live: IB ``keepUpToDate`` bars, Alpaca's data
        stream).
    stream_grace_s
        A streamed bar time is released when every symbol has delivered it, or this many
        seconds after its first bar (for symbols that did not trade). Default 5.
    """

    kind: Literal["sim", "ib", "alpaca", "ib+alpaca"] = "sim"
    failover_after_s: float = 30.0
    bar_interval_s: int = 60
    poll_interval_s: float = 60.0
    watchlist: tuple[str, ...] = ()
    warmup_bars: int = 300
    feed: Literal["poll", "stream"] = "poll"
    stream_grace_s: float = 5.0

    def __post_init__(self) -> None:
        require_non_negative("failover_after_s", self.failover_after_s)
        if self.warmup_bars < 1:
            raise ValueError(f"warmup_bars must be >= 1, got {self.warmup_bars}")
        if self.bar_interval_s < 1:
            raise ValueError(f"bar_interval_s must be >= 1, got {self.bar_interval_s}")
        require_positive("poll_interval_s", self.poll_interval_s)


class IBConfig(Section, frozen=True):
    """TWS / IB Gateway. Paper defaults: port 7497 (TWS) or 4002 (IB Gateway).

    ``client_id`` places orders; ``data_client_id`` (a second connection) polls bars.
    ``what_to_show``: MIDPOINT on paper accounts (no TRADES data there; MIDPOINT bars have
    no volume), TRADES live. ``max_requests``: ib_async's throttle (IB allows 45 messages
    a second). ``historical_pacing``: keep bar polls inside IB's pacing rules (at most 60
    requests per 10 minutes, so about 5 symbols polled every minute; the poller waits
    rather than break them). Turn both off only against an emulator.
    ``reconnect_initial_s`` / ``reconnect_max_s``: the reconnect backoff (doubling from the
    first to the second).
    """

    host: str = "127.0.0.1"
    port: int = 7497
    client_id: int = 1
    data_client_id: int = 2
    account: str = ""
    what_to_show: Literal["MIDPOINT", "TRADES"] = "MIDPOINT"
    use_rth: bool = True
    connect_timeout_s: float = 5.0
    max_requests: int = 45
    historical_pacing: bool = True
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0

    def __post_init__(self) -> None:
        require_positive("reconnect_initial_s", self.reconnect_initial_s)
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_initial_s "
                f"({self.reconnect_initial_s})"
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be a TCP port, got {self.port}")
        if self.client_id == self.data_client_id:
            raise ValueError("client_id and data_client_id must differ (two connections)")


class AlpacaConfig(Section, frozen=True):
    """Alpaca. Keys come from the environment (APCA_API_KEY_ID, APCA_API_SECRET_KEY)."""

    paper: bool = True
    feed: Literal["iex", "sip"] = "iex"


class StateConfig(Section, frozen=True):
    """Where state that must survive restarts lives.

    Parameters
    ----------
    redis_url
        ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS, or
        ``unix:///path/to/socket``) to keep the state store in Redis (shared by every
        node of a cluster); empty keeps it in SQLite in the state directory. The form is
        checked at load; whether Redis answers is checked when a command starts.
    """

    redis_url: str = ""

    def __post_init__(self) -> None:
        if self.redis_url:
            problem = redis_url_problem(self.redis_url)
            if problem is not None:
                raise ValueError(f"redis_url {problem}, got {redact_url(self.redis_url)!r}")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Unparsable, so where a password would be is unknown: show only the scheme.
        return url.partition("://")[0] + "://..."
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redis_url_problem(url: str) -> str | None:
    """What is wrong with the form of a Redis URL (None: nothing), as redis-py reads it."""
    bad_port = "has a bad port (a number from 1 to 65535)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return bad_port if "port" in str(exc).lower() else f"is not a URL ({exc})"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "must start with redis://, rediss:// or unix://"
    if parts.scheme == "unix":
        return None if parts.path else "needs the socket path (unix:///path/to/socket)"
    if port == 0:
        return bad_port
    if not parts.hostname:
        return "needs a host (redis://host:port/db)"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"has a database that is not a number ({db!r}; redis://host:port/0)"
    return None


class ConstitutionOverrides(Section, frozen=True):
    """The ``[constitution]`` table: values may only make a limit stricter."""

    max_position_size: float | None = None
    max_daily_loss: float | None = None
    max_drawdown: float | None = None
    min_confidence_for_trade: float | None = None
    max_rule_changes_per_day: int | None = None
    max_active_rules: int | None = None


NotifyMode = Literal["on", "silent", "off"]

# Every kind of notification the system raises, and how each channel treats it unless
# configured otherwise: "on" (Telegram: with a sound), "silent" (Telegram: delivered
# without a sound; the console prints it like "on"), "off" (not delivered).
NOTIFICATION_KINDS: dict[str, tuple[NotifyMode, NotifyMode]] = {
    # kind: (telegram default, console default)
    "modification_deployed": ("on", "on"),
    "modification_rejected": ("on", "on"),
    "modification_decision": ("silent", "on"),
    "rules_changed": ("on", "on"),
    "rollback": ("on", "on"),
    "rollback_refused": ("on", "on"),
    "trading_state": ("on", "on"),
    "broker_failover": ("on", "on"),
    "broker_failback": ("on", "on"),
    "position_mismatch": ("on", "on"),
    "constitution": ("on", "on"),
    "fill": ("off", "off"),
    "order_rejected": ("silent", "on"),
    "trade_closed": ("silent", "on"),
    "rule_evaluation": ("silent", "on"),
    "regime": ("silent", "on"),
    "session": ("silent", "on"),
    # One a trading day: an equity chart on Telegram; on the console a multi-year replay
    # would print thousands of them.
    "daily_summary": ("on", "off"),
}


class NotificationsConfig(Section, frozen=True):
    """Per kind of notification, per channel: ``"on"``, ``"silent"`` or ``"off"``.

    ``[notifications.telegram]`` and ``[notifications.console]`` map a kind (see
    ``NOTIFICATION_KINDS``: ``modification_deployed``, ``trading_state``, ``fill``,
    ``daily_summary``, ...) to a mode; kinds not named keep their defaults. An unknown
    kind is an error naming it.
    """

    telegram: dict[str, NotifyMode] = msgspec.field(default_factory=dict)
    console: dict[str, NotifyMode] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for channel, table in (("telegram", self.telegram), ("console", self.console)):
            unknown = sorted(set(table) - set(NOTIFICATION_KINDS))
            if unknown:
                raise ValueError(
                    f"[notifications.{channel}] unknown kind(s) {unknown}; known kinds: "
                    f"{sorted(NOTIFICATION_KINDS)}"
                )

    def mode(self, channel: Literal["telegram", "console"], kind: str) -> NotifyMode:
        table = self.telegram if channel == "telegram" else self.console
        if kind in table:
            return table[kind]
        default = NOTIFICATION_KINDS.get(kind)
        if default is None:
            return "on"  # a kind added without a default is shown rather than lost
        return default[0] if channel == "telegram" else default[1]

    def wants(self, kind: str) -> bool:
        """Whether any channel delivers ``kind`` (so it is worth producing)."""
        return self.mode("telegram", kind) != "off" or self.mode("console", kind) != "off"


class TelegramConfig(Section, frozen=True):
    """The operator bot. The token is never configured here: it comes from the
    environment (``SOVEREIGN_TELEGRAM_TOKEN``), as may the allowlist
    (``SOVEREIGN_TELEGRAM_ALLOWED_USERS``, comma-separated user ids, added to
    ``allowed_users``) and the Bot API server (``SOVEREIGN_TELEGRAM_BASE_URL``).

    Parameters
    ----------
    allowed_users
        Telegram user ids that may command the bot, in a private chat only. Deny by
        default: with none, nobody can.
    notify_chats
        Where notifications go; default: each allowed user's private chat.
    queue_size
        Notifications waiting to be sent (during an outage); beyond it the oldest
        info-level one is dropped (counted). Default 500.
    retry_initial_s, retry_max_s
        Send retries back off from the first to the second, doubling. Defaults 1, 60.
    max_age_s
        A notification not delivered within this long is dropped (counted). Default 3600.
    stranger_window_s, stranger_audit_per_window
        Someone not on the allowlist gets one refusal and at most this many audit-log
        entries per window; the rest is only counted. Defaults 600 s, 3.
    history_page_size
        Modifications per ``/history`` page. Default 5.
    """

    allowed_users: tuple[int, ...] = ()
    notify_chats: tuple[int, ...] = ()
    queue_size: int = 500
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    max_age_s: float = 3600.0
    stranger_window_s: float = 600.0
    stranger_audit_per_window: int = 3
    history_page_size: int = 5

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        require_positive("retry_initial_s", self.retry_initial_s)
        require_positive("retry_max_s", self.retry_max_s)
        require_positive("max_age_s", self.max_age_s)
        require_positive("stranger_window_s", self.stranger_window_s)
        if self.stranger_audit_per_window < 0:
            raise ValueError("stranger_audit_per_window must be >= 0")
        if not 1 <= self.history_page_size <= 20:
            raise ValueError(f"history_page_size must be 1..20, got {self.history_page_size}")
        if any(u <= 0 for u in self.allowed_users):
            raise ValueError("allowed_users are Telegram user ids (positive integers)")
