"""The operator bot's incoming side: which Telegram updates get an answer, who is refused
(and audited), and the answer to each command.

Authorisation is deny by default (see ``sovereign.comms.telegram``). The commands' facts
come from ``sovereign.operations`` and their text from ``sovereign.comms.text``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sovereign.comms import text as fmt
from sovereign.config import Config

if TYPE_CHECKING:
    from sovereign.comms.telegram import TelegramCounters, TelegramSettings

log = logging.getLogger("sovereign.telegram")

IgnoreReason = Literal["business", "channel", "edited", "not_own_chat", "other"]


def ignore_reason(update: Any) -> IgnoreReason | None:
    """Why ``update`` must get no answer at all, or None for a new message that the
    allowlist and chat-type checks then decide on.

    Only ``update.message`` can be a command: ``effective_message`` would also return an
    edit, a business account's message or a channel post (and a callback query's message,
    which the bot wrote itself).
    """
    message = update.message
    if message is None:
        if (
            update.business_connection is not None
            or update.business_message is not None
            or update.edited_business_message is not None
            or update.deleted_business_messages is not None
        ):
            return "business"
        if update.channel_post is not None or update.edited_channel_post is not None:
            return "channel"
        if update.edited_message is not None:
            return "edited"
        return "other"
    # Telegram puts none of these in a plain new message; checked all the same, since an
    # answer to such a message would go into a chat with someone else.
    if message.business_connection_id:
        return "business"
    if message.edit_date is not None:
        return "edited"
    user = message.from_user
    if user is None:
        return "other"
    if message.chat.type == "private" and message.chat.id != user.id:
        return "not_own_chat"
    return None


@dataclass(slots=True)
class _StrangerWindow:
    started: float
    attempts: int = 0
    audited: int = 0
    replied: bool = False


class OperatorCommands:
    """The commands an operator sends the bot, and the refusals everyone else gets.

    Parameters
    ----------
    settings
        The bot's settings (the allowlist, retries, stranger windows, history page size).
    state_dir, config, scope
        As for ``OperatorBot``: the state the commands read (and ``/rollback`` writes).
    counters
        The bot's counters, shared with its sending side.
    stats
        The bot's ``stats``: ``/status`` reports the notification queue.
    clock
        Monotonic seconds, for the stranger windows.
    """

    def __init__(
        self,
        settings: TelegramSettings,
        state_dir: Path,
        config: Config,
        *,
        scope: str,
        counters: TelegramCounters,
        stats: Callable[[], dict[str, int]],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.config = config
        self.scope = scope
        self.counters = counters
        self.stats = stats
        self.clock = clock
        self._strangers: dict[int, _StrangerWindow] = {}
        self._audit_window: tuple[float, int] = (0.0, 0)

    async def on_update(self, update: Any, context: Any) -> None:
        """Answer, refuse or ignore one update (the bot's only handler)."""
        reason = ignore_reason(update)
        if reason is not None:
            self._ignore(update, reason)
            return
        message = update.message
        user, chat = message.from_user, message.chat
        text = (message.text or "").strip()
        if user.id not in self.settings.allowed_users or chat.type != "private":
            await self._deny(context.bot, user, chat, text)
            return
        self.counters.commands += 1
        if not text.startswith("/"):
            answer = "Commands start with /. /help lists them."
        else:
            word, _, argument = text[1:].partition(" ")
            command = word.split("@", 1)[0].lower()
            log.info("operator %s: /%s %s", user.id, command, argument[:64])
            answer = await asyncio.to_thread(self.answer, command, argument.strip(), user.id)
        for part in fmt.split_message(answer):
            await self._reply(context.bot, chat.id, part)

    def _ignore(self, update: Any, reason: IgnoreReason) -> None:
        c = self.counters
        c.ignored_updates += 1
        name = f"ignored_{reason}"
        setattr(c, name, getattr(c, name) + 1)
        user, chat = update.effective_user, update.effective_chat
        log.info(
            "Telegram: ignored update %s (%s) from user %s in chat %s",
            update.update_id,
            reason,
            "-" if user is None else user.id,
            "-" if chat is None else chat.id,
        )

    async def _reply(self, bot: Any, chat_id: int, text: str) -> None:
        delay = self.settings.config.retry_initial_s
        for attempt in range(4):
            try:
                await bot.send_message(chat_id, text)
                self.counters.replies += 1
                return
            except Exception as exc:
                if attempt == 3:
                    self.counters.failed += 1
                    log.error("could not answer chat %s: %s", chat_id, exc)
                    return
                self.counters.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.config.retry_max_s)

    def answer(self, command: str, argument: str, user_id: int) -> str:
        """The reply to an authorised operator's command (runs off the event loop)."""
        from sovereign import operations as ops

        try:
            handler = self._commands().get(command)
            if handler is None:
                return f"Unknown command /{command}. /help lists the commands."
            return handler(argument, user_id)
        except ops.OperationError as exc:
            return str(exc)
        except Exception:
            self.counters.errors += 1
            log.exception("/%s failed", command)
            return f"/{command} failed with an internal error; it was logged."

    def _commands(self) -> dict[str, Callable[[str, int], str]]:
        return {
            "start": self._help,
            "help": self._help,
            "status": self._status,
            "capital": self._capital,
            "constitution": self._constitution,
            "rules": self._rules,
            "history": self._history,
            "readiness": self._readiness,
            "rollback": self._rollback,
        }

    def _no_argument(self, name: str, argument: str) -> None:
        from sovereign.operations import OperationError

        if argument:
            raise OperationError(f"/{name} takes no arguments (got {argument[:40]!r})")

    def _scope_or_none(self) -> Any:
        from sovereign.operations import Scope, find_scope

        return Scope(self.scope) if self.scope else find_scope(self.state_dir, self.config)

    def _scope(self) -> Any:
        from sovereign.operations import OperationError

        found = self._scope_or_none()
        if found is None:
            raise OperationError(
                f"no trading session has stored any state in {self.state_dir.name} yet"
            )
        return found

    def _help(self, argument: str, user_id: int) -> str:
        return fmt.help_text()

    def _status(self, argument: str, user_id: int) -> str:
        from sovereign import operations as ops

        self._no_argument("status", argument)
        scope = self._scope()
        lines = [f"Status of {scope.label}"]
        try:
            c = ops.capital(self.state_dir, self.config, scope)
            view = ops.constitution(self.state_dir, self.config, scope)
            lines.append(f"  trading state   {view.trading_state}")
            lines.append(f"  equity          {c.equity:,.2f} (day {c.day_pnl:+,.2f})")
            lines.append(f"  drawdown        {c.drawdown:.2%}")
            lines.append(f"  open positions  {c.open_positions}")
            lines.append(f"  as of           {fmt.when(c.as_of_ts)}")
        except ops.OperationError as exc:
            lines.append(f"  {exc}")
        version, rules, _ = ops.rules(self.state_dir, scope)
        lines.append(f"  rules           {len(rules)} active (rule set v{version})")
        st = self.stats()
        lines.append(
            f"  notifications   {st['sent']} sent, {st['pending']} pending, "
            f"{st['dropped_queue_full'] + st['dropped_expired']} dropped"
        )
        return "\n".join(lines)

    def _capital(self, argument: str, user_id: int) -> str:
        from sovereign import operations as ops

        self._no_argument("capital", argument)
        return fmt.capital_text(ops.capital(self.state_dir, self.config, self._scope()))

    def _constitution(self, argument: str, user_id: int) -> str:
        from sovereign import operations as ops

        self._no_argument("constitution", argument)
        scope = self._scope_or_none()
        return fmt.constitution_text(ops.constitution(self.state_dir, self.config, scope))

    def _rules(self, argument: str, user_id: int) -> str:
        from sovereign import operations as ops

        self._no_argument("rules", argument)
        scope = self._scope()
        version, rules, params = ops.rules(self.state_dir, scope)
        return fmt.rules_text(scope.label, version, rules, params)

    def _history(self, argument: str, user_id: int) -> str:
        from sovereign import operations as ops

        page = 1
        if argument:
            if not argument.isdigit() or int(argument) < 1:
                raise ops.OperationError(
                    f"/history takes a page number, e.g. /history 2 (got {argument[:40]!r})"
                )
            page = int(argument)
        scope = self._scope()
        result = ops.history(
            self.state_dir, scope, page=page, per_page=self.settings.config.history_page_size
        )
        return fmt.history_text(scope.label, result)

    def _readiness(self, argument: str, user_id: int) -> str:
        from sovereign import operations as ops

        self._no_argument("readiness", argument)
        scope = self._scope_or_none()
        return fmt.readiness_text(ops.readiness(self.state_dir, self.config, scope))

    def _rollback(self, argument: str, user_id: int) -> str:
        from sovereign import operations as ops

        if not argument:
            raise ops.OperationError("usage: /rollback <id> (the number /history shows, e.g. 3)")
        result = ops.rollback(self.state_dir, argument, by=f"telegram:{user_id}")
        return fmt.rollback_text(int(argument.strip().lstrip("#")), result)

    # -- STRANGERS --

    async def _deny(self, bot: Any, user: Any, chat: Any, text: str) -> None:
        self.counters.denied += 1
        now = self.clock()
        window_s = self.settings.config.stranger_window_s
        w = self._strangers.get(user.id)
        if w is None or now - w.started >= window_s:
            w = self._strangers[user.id] = _StrangerWindow(started=now)
            if len(self._strangers) > 10_000:  # forget the oldest windows, bounded memory
                for uid in sorted(self._strangers, key=lambda u: self._strangers[u].started)[
                    :5_000
                ]:
                    del self._strangers[uid]
        w.attempts += 1
        allowed = user.id in self.settings.allowed_users
        reason = "group_chat" if allowed else "not_on_allowlist"
        if w.audited < self.settings.config.stranger_audit_per_window and self._audit_budget(now):
            w.audited += 1
            self.counters.denied_audited += 1
            payload = {
                "user_id": int(user.id),
                "username": str(getattr(user, "username", "") or "")[:64],
                "chat_id": int(chat.id),
                "chat_type": str(chat.type),
                "command": text.split(" ", 1)[0][:64],
                "reason": reason,
                "attempts_in_window": w.attempts,
            }
            await asyncio.to_thread(self._audit, payload)
        log.warning("Telegram: denied user %s in %s chat (%s)", user.id, chat.type, reason)
        if w.replied:
            return
        if chat.type == "private":
            # The sender's own chat with the bot: ignore_reason let no other private chat in.
            w.replied = True
            await self._reply(bot, chat.id, "Not authorised.")
        elif allowed:
            # An operator writing in a group is told where commands work in their own
            # private chat: a word in the group would tell its members who runs the bot.
            w.replied = True
            await self._reply(bot, user.id, "Operator commands work only in a private chat.")

    def _audit_budget(self, now: float) -> bool:
        # At most 100 stranger entries per window in all, however many strangers there are.
        start, n = self._audit_window
        if now - start >= self.settings.config.stranger_window_s:
            start, n = now, 0
        if n >= 100:
            self._audit_window = (start, n)
            return False
        self._audit_window = (start, n + 1)
        return True

    def _audit(self, payload: dict[str, Any]) -> None:
        from sovereign.memory.audit import AuditLog, governance_path

        try:
            with AuditLog(governance_path(self.state_dir)) as audit:
                audit.append(
                    ts_ns=time.time_ns(),
                    actor="operator/telegram",
                    action="telegram_denied",
                    payload=payload,
                )
        except Exception as exc:
            self.counters.errors += 1
            log.error("could not audit a denied Telegram user: %s", exc)
