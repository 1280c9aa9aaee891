"""The operator bot on Telegram, with python-telegram-bot.

``OperatorBot`` runs the real python-telegram-bot client on its own thread and event loop,
so neither a slow Bot API nor an outage can block or slow trading: ``notify`` only appends
to a bounded queue, and a sender task delivers from it with retries and backoff. What
cannot be kept (the queue is full, a notification grew older than ``max_age_s``, Telegram
refused it for good) is dropped and counted, never silently lost.

Authorisation is deny by default: commands are answered only for user ids on the
allowlist and only in their own private chat with the bot (a group would show the answer
to its other members, and being in a group grants nothing). Only a new message counts: an
edit would run its command a second time, and a business account's messages (the
operator writing to someone else) or a channel post would be answered where other people
read, so those updates are ignored without a word, and only counted and logged. Anyone
else gets no data — one short refusal per window in their own private chat, nothing in a
group — and is written to the audit log, rate limited so that a flood cannot fill it.
The token comes from the environment and is redacted from every log record and error this
process produces.

The commands are checked and answered in ``sovereign.comms.telegram_commands``; their
facts come from ``sovereign.operations`` and their text from ``sovereign.comms.text`` (the
CLI uses the same), so the bot only routes and checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sovereign.comms import text as fmt
from sovereign.comms.telegram_commands import OperatorCommands
from sovereign.config import Config, ConfigError
from sovereign.domain.service_settings import NotifyMode, TelegramConfig
from sovereign.messages import Notification

log = logging.getLogger("sovereign.telegram")

TOKEN_ENV = "SOVEREIGN_TELEGRAM_TOKEN"
ALLOWED_ENV = "SOVEREIGN_TELEGRAM_ALLOWED_USERS"
BASE_URL_ENV = "SOVEREIGN_TELEGRAM_BASE_URL"
DEFAULT_BASE_URL = "https://api.telegram.org/bot"
CAPTION_LIMIT = 1024
REDACTED = "<telegram-token>"


class TelegramSetupError(RuntimeError):
    """The bot cannot run as configured (the message never contains the token)."""


@dataclass(frozen=True, slots=True)
class TelegramSettings:
    token: str = field(repr=False)
    base_url: str
    allowed_users: frozenset[int]
    notify_chats: tuple[int, ...]
    config: TelegramConfig

    @classmethod
    def from_env(
        cls, config: Config, environ: Mapping[str, str] | None = None
    ) -> TelegramSettings | None:
        """The bot's settings, or ``None`` when no token is configured (console only).

        Raises
        ------
        ConfigError
            If the allowlist in the environment is not a list of user ids.
        """
        env = os.environ if environ is None else environ
        token = env.get(TOKEN_ENV, "").strip()
        if not token:
            return None
        allowed = set(config.telegram.allowed_users)
        raw = env.get(ALLOWED_ENV, "")
        for item in (p.strip() for p in raw.split(",")):
            if not item:
                continue
            if not item.isdigit() or int(item) <= 0:
                raise ConfigError(
                    f"{ALLOWED_ENV} must be comma-separated Telegram user ids, got {item!r}"
                )
            allowed.add(int(item))
        base = env.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
        chats = config.telegram.notify_chats or tuple(sorted(allowed))
        return cls(token, base, frozenset(allowed), chats, config.telegram)

    @property
    def base_file_url(self) -> str:
        # api.telegram.org/bot -> api.telegram.org/file/bot, as Telegram lays it out.
        head, sep, tail = self.base_url.rpartition("/bot")
        return f"{head}/file/bot{tail}" if sep else self.base_url


# -- REDACTION --------------------------------------------------------------------------

_redacted_tokens: set[str] = set()
_factory_lock = threading.Lock()
_factory_installed = False


def redact(text: str) -> str:
    for token in _redacted_tokens:
        if token:
            text = text.replace(token, REDACTED)
    return text


def _install_redaction(token: str) -> None:
    """Redact ``token`` from every log record this process creates from now on.

    A record factory (not a handler filter) so it also covers handlers added later and
    the libraries' loggers (httpx logs request URLs, which carry the token).
    """
    global _factory_installed
    if not token:
        return
    with _factory_lock:
        _redacted_tokens.add(token)
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a broken format string is not ours to fix here
                return record
            if any(t in message for t in _redacted_tokens):
                record.msg, record.args = redact(message), None
            if record.exc_info and record.exc_info[1] is not None:
                kind = record.exc_info[0].__name__ if record.exc_info[0] else "error"
                detail = f"{kind}: {record.exc_info[1]}"
                if any(t in detail for t in _redacted_tokens):
                    record.msg = f"{record.msg} ({redact(detail)})"
                    record.exc_info, record.exc_text = None, None
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True
    # httpx logs every request line at INFO, URL (and so the token) included.
    logging.getLogger("httpx").setLevel(logging.WARNING)


# -- THE BOT ----------------------------------------------------------------------------


@dataclass(slots=True)
class TelegramCounters:
    queued: int = 0
    sent: int = 0
    photos: int = 0
    retries: int = 0
    dropped_queue_full: int = 0
    dropped_expired: int = 0
    failed: int = 0
    filtered_off: int = 0
    commands: int = 0
    replies: int = 0
    denied: int = 0
    denied_audited: int = 0
    # Updates answered with nothing at all (see ``telegram_commands.ignore_reason``), in all
    # and by reason.
    ignored_updates: int = 0
    ignored_business: int = 0
    ignored_channel: int = 0
    ignored_edited: int = 0
    ignored_not_own_chat: int = 0
    ignored_other: int = 0
    errors: int = 0


@dataclass(slots=True)
class _Outgoing:
    note: Notification
    silent: bool
    chats: list[int]
    enqueued: float


class OperatorBot:
    """The Telegram front end: commands in, notifications out.

    Parameters
    ----------
    settings
        From ``TelegramSettings.from_env``.
    state_dir
        The state directory the commands read (and ``/rollback`` writes).
    config
        The configuration (notification modes, constitution, state store).
    scope
        Whose state to report (``account/<name>`` or ``run/<id>``); empty: the configured
        account, else the most recently active one.
    poll_timeout_s
        The ``getUpdates`` long-poll timeout.
    """

    def __init__(
        self,
        settings: TelegramSettings,
        state_dir: str | Path,
        config: Config,
        *,
        scope: str = "",
        poll_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _install_redaction(settings.token)
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.config = config
        self.scope = scope
        self.poll_timeout_s = poll_timeout_s
        self.clock = clock
        self.counters = TelegramCounters()
        self._queue: deque[_Outgoing] = deque()
        self._inflight: _Outgoing | None = None  # the head item while it is being sent
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._drain_deadline = 0.0
        self.connected = False
        self.commands = OperatorCommands(
            settings,
            self.state_dir,
            config,
            scope=scope,
            counters=self.counters,
            stats=self.stats,
            clock=clock,
        )

    # -- LIFECYCLE --

    def start(self, wait_s: float = 10.0) -> None:
        """Start the bot thread; wait up to ``wait_s`` for Telegram to answer.

        A bad token raises ``TelegramSetupError``. An unreachable Bot API does not: the
        bot keeps trying in the background and notifications queue meanwhile.
        """
        if self._thread is not None:
            raise RuntimeError("the operator bot is already started")
        self._thread = threading.Thread(target=self._thread_main, name="telegram", daemon=True)
        self._thread.start()
        self._ready.wait(wait_s)
        if self._startup_error is not None:
            self._thread.join(timeout=5)
            self._thread = None
            raise TelegramSetupError(redact(str(self._startup_error)))
        if not self.connected:
            log.warning("Telegram is not reachable yet; notifications queue until it is")

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop polling; keep sending what is queued for up to ``drain_s`` seconds."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._drain_deadline = self.clock() + drain_s
        stopping = self._stopping
        if stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=drain_s + self.poll_timeout_s + 15)
        self._thread = None
        with self._lock:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self.counters.dropped_expired += left
            log.warning("%d Telegram notification(s) not delivered before shutdown", left)

    def run_forever(self) -> None:
        """Serve until interrupted (``sovereign operator``)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=1.0)
        finally:
            self.stop()

    def stats(self) -> dict[str, int]:
        with self._lock:
            pending = len(self._queue)
        return {**asdict(self.counters), "pending": pending}

    # -- NOTIFICATIONS (any thread) --

    def mode(self, kind: str) -> NotifyMode:
        return self.config.notifications.mode("telegram", kind)

    def notify(self, note: Notification) -> None:
        """Queue ``note`` for delivery; never blocks on Telegram."""
        mode = self.mode(note.kind)
        if mode == "off" or not self.settings.notify_chats:
            self.counters.filtered_off += 1
            return
        item = _Outgoing(note, mode == "silent", list(self.settings.notify_chats), self.clock())
        with self._lock:
            self.counters.queued += 1
            if len(self._queue) >= self.settings.config.queue_size and not self._evict():
                self.counters.dropped_queue_full += 1
                log.warning("Telegram queue full: dropped %s %r", note.kind, note.title)
                return
            self._queue.append(item)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            # A closed loop raises: the item then stays counted as pending.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    def _evict(self) -> bool:
        """Make room: drop the oldest info-level notification, else the oldest — never the
        one being sent right now. False if there is nothing to drop but that one."""
        waiting = [i for i, o in enumerate(self._queue) if o is not self._inflight]
        if not waiting:
            return False
        victim = next((i for i in waiting if self._queue[i].note.level == "info"), waiting[0])
        dropped = self._queue[victim]
        del self._queue[victim]
        self.counters.dropped_queue_full += 1
        log.warning("Telegram queue full: dropped %s %r", dropped.note.kind, dropped.note.title)
        return True

    # -- THE LOOP --

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # the thread must end with a reason, not silently
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            log.error("Telegram bot stopped: %s", redact(repr(exc)))
        finally:
            loop.close()
            self._loop = None

    async def _main(self) -> None:
        from telegram import BotCommand, Update
        from telegram.error import InvalidToken
        from telegram.ext import ApplicationBuilder, TypeHandler

        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._initialized = asyncio.Event()
        s = self.settings
        app = (
            ApplicationBuilder()
            .token(s.token)
            .base_url(s.base_url)
            .base_file_url(s.base_file_url)
            .get_updates_read_timeout(self.poll_timeout_s + 5)
            .build()
        )
        app.add_handler(TypeHandler(Update, self.commands.on_update))
        app.add_error_handler(self._on_error)
        backoff = s.config.retry_initial_s
        sender = asyncio.create_task(self._sender(app.bot))
        try:
            while not self._stopping.is_set():
                try:
                    await app.initialize()
                    self._initialized.set()
                    break
                except InvalidToken as exc:
                    raise TelegramSetupError(
                        f"Telegram refused the bot token in {TOKEN_ENV}: {exc}"
                    ) from None
                except Exception as exc:
                    log.warning("Telegram not reachable (%s); retry in %.0f s", exc, backoff)
                    self._ready.set()  # start() returns; trading does not wait for Telegram
                    await self._sleep_or_stop(backoff)
                    backoff = min(backoff * 2, s.config.retry_max_s)
            if self._stopping.is_set():
                return
            await app.start()
            assert app.updater is not None
            await app.updater.start_polling(
                timeout=int(self.poll_timeout_s),
                bootstrap_retries=-1,
                allowed_updates=Update.ALL_TYPES,
                error_callback=self._on_polling_error,
            )
            self.connected = True
            self._ready.set()
            try:
                await app.bot.set_my_commands(
                    [BotCommand(name, what[:256]) for name, what in fmt.COMMANDS.items()]
                )
            except Exception as exc:  # the menu is a convenience, not a requirement
                log.info("could not set the command menu: %s", exc)
            await self._stopping.wait()
            await app.updater.stop()
            await app.stop()
        finally:
            self._stopping.set()
            self._wake.set()
            await sender
            if app.running:
                await app.stop()
            await app.shutdown()

    async def _sleep_or_stop(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _on_polling_error(self, exc: Exception) -> None:
        self.counters.errors += 1
        log.warning("Telegram polling: %s", exc)

    async def _on_error(self, update: object, context: Any) -> None:
        self.counters.errors += 1
        log.error("Telegram handler error: %r", context.error)

    # -- SENDING --

    async def _sender(self, bot: Any) -> None:
        from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter

        assert self._wake is not None and self._stopping is not None
        cfg = self.settings.config
        delay = cfg.retry_initial_s
        # Nothing can be sent before the client is initialised; notifications queue.
        init = asyncio.ensure_future(self._initialized.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({init, stop}, return_when=asyncio.FIRST_COMPLETED)
        init.cancel()
        stop.cancel()
        if not self._initialized.is_set():
            return
        while True:
            with self._lock:
                item = self._queue[0] if self._queue else None
                self._inflight = item
            if item is None:
                if self._stopping.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._stopping.is_set() and self.clock() > self._drain_deadline:
                return
            if self.clock() - item.enqueued > cfg.max_age_s:
                self._pop(item)
                self.counters.dropped_expired += 1
                log.warning("Telegram notification expired undelivered: %r", item.note.title)
                continue
            try:
                while item.chats:
                    await self._deliver(bot, item, item.chats[0])
                    item.chats.pop(0)
            except RetryAfter as exc:
                self.counters.retries += 1
                wait = exc.retry_after
                seconds = wait.total_seconds() if hasattr(wait, "total_seconds") else float(wait)
                await self._sleep_or_wake(max(seconds, cfg.retry_initial_s))
                continue
            except (BadRequest, Forbidden, InvalidToken) as exc:
                # Telegram will never take this one (a blocked bot, a bad chat): move on.
                self.counters.failed += 1
                log.error("Telegram refused %r for chat %s: %s", item.note.title, item.chats, exc)
                self._pop(item)
                continue
            except Exception as exc:  # NetworkError, TimedOut, an outage
                self.counters.retries += 1
                log.warning("Telegram send failed (%s); retry in %.1f s", exc, delay)
                await self._sleep_or_wake(delay)
                delay = min(delay * 2, cfg.retry_max_s)
                continue
            delay = cfg.retry_initial_s
            self._pop(item)

    async def _sleep_or_wake(self, seconds: float) -> None:
        # Stopping cuts a backoff short only to re-check the drain deadline.
        if self._stopping is not None and self._stopping.is_set():
            seconds = min(seconds, max(0.05, self._drain_deadline - self.clock()))
        await asyncio.sleep(seconds)

    def _pop(self, item: _Outgoing) -> None:
        with self._lock:
            if self._queue and self._queue[0] is item:
                self._queue.popleft()
            self._inflight = None

    async def _deliver(self, bot: Any, item: _Outgoing, chat: int) -> None:
        note = item.note
        series = getattr(note, "equity", None)
        if note.kind == "daily_summary" and series is not None and len(series):
            from sovereign.comms.charts import render_equity_png

            png = await asyncio.to_thread(
                render_equity_png,
                note.equity_ts.to_numpy(),  # type: ignore[attr-defined]
                series.to_numpy(),
                title=note.title,
                highlight_from_ns=int(note.data.get("day_start_ts") or 0) or None,
            )
            await bot.send_photo(
                chat,
                photo=png,
                caption=note.title[:CAPTION_LIMIT],
                disable_notification=item.silent,
            )
            self.counters.photos += 1
            if note.text:
                for part in fmt.split_message(note.text):
                    await bot.send_message(chat, part, disable_notification=True)
            self.counters.sent += 1
            return
        body = note.title if not note.text else f"{note.title}\n{note.text}"
        if note.level == "critical":
            body = f"CRITICAL {body}"
        for part in fmt.split_message(body):
            await bot.send_message(chat, part, disable_notification=item.silent)
        self.counters.sent += 1

    # -- COMMANDS --

    def answer(self, command: str, argument: str, user_id: int) -> str:
        """The reply to an authorised operator's command (runs off the event loop)."""
        return self.commands.answer(command, argument, user_id)


class ChannelFilter:
    """A notifier that passes on only what its channel's mode lets through."""

    def __init__(self, notifier: Any, config: Config, channel: str) -> None:
        self.notifier = notifier
        self.config = config
        self.channel = channel

    def notify(self, note: Notification) -> None:
        if self.config.notifications.mode(self.channel, note.kind) != "off":  # type: ignore[arg-type]
            self.notifier.notify(note)


class FanOut:
    """Several notifiers behind one ``notify``; one failing never stops the others."""

    def __init__(self, *notifiers: Any) -> None:
        self.notifiers = [n for n in notifiers if n is not None]

    def notify(self, note: Notification) -> None:
        for n in self.notifiers:
            try:
                n.notify(note)
            except Exception:
                log.exception("a notifier failed")
