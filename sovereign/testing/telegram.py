"""A loopback Telegram Bot API for the operator bot's tests and demos.

:class:`TelegramEmulator` serves, on ``http://127.0.0.1:P``, the part of the Bot API that
python-telegram-bot uses for a command bot, with JSON shaped like Telegram's so that the
real library parses it. The server runs on its own event loop in a background thread, so
a synchronous test can play the users (:meth:`~TelegramEmulator.send_text`) and read what
the bot said (:meth:`~TelegramEmulator.sent`) while the bot runs on any loop.

Point python-telegram-bot at it with::

    ApplicationBuilder().token(em.token).base_url(em.base_url).base_file_url(em.base_file_url)
    # or Bot(em.token, base_url=em.base_url, base_file_url=em.base_file_url)

where ``base_url`` is ``"http://127.0.0.1:P/bot"``: the library appends the token and
``/<method>``, as it does for ``https://api.telegram.org/bot``.

Telegram's rules it keeps, because the project's code must cope with them:

* Every answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N,
  "description": "..."}`` with the same HTTP status; a 429 carries
  ``parameters.retry_after``. A well-formed but wrong token gets 401 Unauthorized, a
  malformed one 404 Not Found (the library raises ``InvalidToken`` for both).
* ``getUpdates`` long-polls: it holds the request until an update arrives or ``timeout``
  passes. Updates stay queued until a later call's ``offset`` confirms them (a negative
  offset keeps only the last ``-offset``), and a newer ``getUpdates`` ends a waiting one
  with 409 Conflict.
* Message text is 1-4096 characters and a caption at most 1024, counted after the markup
  is parsed: for ``parse_mode="HTML"`` tags are stripped, entities unescaped and unknown or
  unbalanced tags refused ("can't parse entities"); Markdown is counted raw, which is
  stricter than Telegram. Replying to a message that the chat does not hold is refused
  unless ``allow_sending_without_reply`` is set.
* Method names are case-insensitive; GET and POST, query strings, form, multipart and JSON
  bodies are all accepted.
* Besides new messages (``message``), the users' side can produce the updates a bot must
  not mistake for them: a user editing a message (``edited_message``), a business
  account's chats (``business_connection``, ``business_message`` and
  ``edited_business_message``, whose messages carry ``business_connection_id``) and
  channel posts (``channel_post``, ``edited_channel_post``, with ``sender_chat`` and no
  ``from``).

What it does not do: webhooks (``setWebhook`` is answered ``true`` and ignored), inline
mode, payments, the bot editing its own messages, sending on behalf of a business account,
media groups, ``allowed_updates`` filtering, MarkdownV2 validation, per-chat rate limits
(use :meth:`~TelegramEmulator.fail_next`), and refusing to message a user who never
started the bot. Any method it does not know is answered
``true`` and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import logging
import re
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from http import HTTPStatus
from typing import Any

from aiohttp import web

log = logging.getLogger("sovereign.testing.telegram")

MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_LIMIT = 100

_TOKEN_RE = re.compile(r"^(\d+):[A-Za-z0-9_-]+$")
# Telegram marks "/cmd" and "/cmd@bot" as a bot_command wherever it stands as a word.
_COMMAND_RE = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![\w@/])")
_HTML_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "code",
        "pre",
        "blockquote",
        "tg-emoji",
    }
)
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF")
_DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
_CONFLICT = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)


class _ApiError(Exception):
    """A Bot API refusal, turned into Telegram's error JSON by the dispatcher."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class _Upload:
    """One file part of a multipart request."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class _StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    description: str
    retry_after: int | None


class _TelegramHtml(HTMLParser):
    """Telegram's HTML subset: the visible text, or the reason it cannot be parsed."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self._lines = source.splitlines(keepends=True)
        self._stack: list[str] = []
        self._text: list[str] = []
        self.error: str | None = None

    def _byte_offset(self) -> int:
        line, column = self.getpos()
        before = "".join(self._lines[: line - 1]) + "".join(self._lines[line - 1 : line])[:column]
        return len(before.encode())

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            self._fail(f'Unsupported start tag "{tag}" at byte offset {self._byte_offset()}')
            return
        self._stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._fail(f'Unsupported start tag "{tag}/" at byte offset {self._byte_offset()}')

    def handle_endtag(self, tag: str) -> None:
        if not self._stack or self._stack[-1] != tag:
            expected = f'"{self._stack[-1]}"' if self._stack else "no end tag"
            self._fail(
                f"Unmatched end tag at byte offset {self._byte_offset()}, expected {expected}, "
                f'found "{tag}"'
            )
            return
        self._stack.pop()

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def visible(self) -> str:
        if self._stack:
            self._fail(f'Can\'t find end tag corresponding to start tag "{self._stack[-1]}"')
        return "".join(self._text)


def _visible_text(text: str, parse_mode: str | None) -> str:
    # What Telegram would show, whose length is what its limits count; 400 for bad markup.
    if (parse_mode or "").upper() != "HTML":
        return text
    parser = _TelegramHtml(text)
    parser.feed(text)
    parser.close()
    visible = parser.visible()
    if parser.error is not None:
        raise _ApiError(400, f"Bad Request: can't parse entities: {parser.error}")
    return visible


def _utf16_length(text: str) -> int:
    # Telegram counts entity offsets and lengths in UTF-16 code units.
    return len(text.encode("utf-16-le")) // 2


def _command_entities(text: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "bot_command",
            "offset": _utf16_length(text[: match.start()]),
            "length": _utf16_length(match.group()),
        }
        for match in _COMMAND_RE.finditer(text)
    ]


def _json_value(value: Any) -> Any:
    # Form and multipart bodies carry objects (reply_parameters, reply_markup) as JSON text.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _as_int(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _ApiError(400, f"Bad Request: invalid integer {value!r}") from None


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _image_size(data: bytes) -> tuple[int, int]:
    # A PNG states its size in the IHDR chunk; other formats get a nominal 1x1.
    if data.startswith(_IMAGE_MAGIC[0]) and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return 1, 1


class TelegramEmulator:
    """A loopback Telegram Bot API server for one bot.

    Parameters
    ----------
    token : str, default "123456:TEST-TOKEN"
        The bot's token; requests with another one get 401. The digits before the colon
        are the bot's user id, as on Telegram.
    port : int, default 0
        The loopback port; 0 picks a free one (read it from :attr:`port` after
        :meth:`start`).
    bot_username : str, default "sovereign_test_bot"
        The username ``getMe`` reports (``CommandHandler`` matches ``/cmd@<username>``).

    Notes
    -----
    The test side is synchronous and thread-safe: :meth:`send_text` queues an update and
    wakes a waiting ``getUpdates``; :meth:`sent` and :meth:`wait_for_sent` read what the
    bot sent successfully, in order, as dicts with the keys ``method``, ``chat_id``,
    ``message_id``, ``text``, ``caption``, ``parse_mode``, ``reply_to_message_id``,
    ``link_preview_disabled``, ``reply_markup``, ``file_id``, ``file_size``,
    ``file_name``, ``mime_type`` and ``ts`` (``time.monotonic()`` when it was accepted);
    the keys that do not apply are None. Refused sends are in :meth:`rejected`.
    """

    def __init__(
        self,
        *,
        token: str = "123456:TEST-TOKEN",
        port: int = 0,
        bot_username: str = "sovereign_test_bot",
    ) -> None:
        match = _TOKEN_RE.match(token)
        if match is None:
            raise ValueError("a bot token looks like '<digits>:<letters, digits, _ or ->'")
        self.token = token
        self.bot_user: dict[str, Any] = {
            "id": int(match.group(1)),
            "is_bot": True,
            "first_name": "Sovereign Test",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self._requested_port = port
        self._port: int | None = None

        # Everything below is shared by the test thread and the server loop.
        self._cond = threading.Condition()
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1000)
        self._file_ids = itertools.count(1)
        self._connection_ids = itertools.count(1)
        self._last_message_id: dict[int | str, int] = {}
        self._chats: dict[int | str, dict[str, Any]] = {}
        self._messages: dict[tuple[int | str, int], dict[str, Any]] = {}
        # Where the message each user-side update delivered is stored, so it can be edited.
        self._origins: dict[int, tuple[int | str, int]] = {}
        self._business: dict[str, dict[str, Any]] = {}
        self._files: dict[str, _StoredFile] = {}
        self._commands: dict[str, list[dict[str, Any]]] = {}
        self._sent: list[dict[str, Any]] = []
        self._rejected: list[dict[str, Any]] = []
        self._calls: Counter[str] = Counter()
        self._failures: deque[_Failure] = deque()
        self._down = False
        self._delay = 0.0
        self._poll_generation = 0
        self._closing = False

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._methods: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "getMe": self._get_me,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "getUpdates": self._get_updates,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendChatAction": self._true,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "getFile": self._get_file,
            "close": self._true,
            "logOut": self._true,
        }
        self._canonical = {name.lower(): name for name in self._methods}

    # -- LIFECYCLE --

    def start(self) -> int:
        """Start serving in a background thread and return the port.

        Raises
        ------
        RuntimeError
            If the emulator was already started.
        OSError
            If the port cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the Telegram emulator is already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="telegram-emulator", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        assert self._port is not None
        return self._port

    def stop(self) -> None:
        """Answer held requests, close the server and its connections, end the thread.

        Idempotent; held ``getUpdates`` calls are answered at once, so this takes
        milliseconds.
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> TelegramEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("the Telegram emulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """What to pass to ``ApplicationBuilder().base_url`` / ``Bot(base_url=...)``."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """What to pass to ``ApplicationBuilder().base_file_url`` (file downloads)."""
        return f"http://127.0.0.1:{self.port}/file/bot"

    # -- THE USERS' SIDE --

    def send_text(
        self,
        text: str,
        *,
        user_id: int,
        chat_id: int | None = None,
        chat_type: str = "private",
        username: str = "",
        first_name: str = "Op",
    ) -> int:
        """Queue a text message from a user, as the bot will receive it.

        Parameters
        ----------
        text : str
            The message. Every ``/command`` or ``/command@bot`` word gets a
            ``bot_command`` entity, with UTF-16 offsets as Telegram sends them.
        user_id : int
            The sender's user id (``update.effective_user.id``).
        chat_id : int, optional
            The chat. Defaults to ``user_id`` for a private chat, ``-user_id`` for a
            group and ``-(10**12 + user_id)`` for a supergroup (Telegram's ``-100...``).
        chat_type : {"private", "group", "supergroup"}
            The chat's type.
        username, first_name : str
            The sender's profile; an empty username is left out, as on Telegram.

        Returns
        -------
        int
            The update id.
        """
        if chat_type not in ("private", "group", "supergroup"):
            raise ValueError(f"chat_type must be private, group or supergroup, not {chat_type!r}")
        if chat_id is None:
            chat_id = {"private": user_id, "group": -user_id}.get(chat_type, -(10**12 + user_id))
        if chat_type == "private" and chat_id != user_id:
            raise ValueError("a private chat's id is its user's id")
        sender: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            sender["username"] = username
        sender["language_code"] = "en"
        if chat_type == "private":
            chat = {"id": chat_id, "type": "private", "first_name": first_name}
            if username:
                chat["username"] = username
        else:
            chat = {"id": chat_id, "type": chat_type, "title": f"Group {chat_id}"}
        message: dict[str, Any] = {"from": sender, "chat": chat, "text": text}
        entities = _command_entities(text)
        if entities:
            message["entities"] = entities
        with self._cond:
            self._chats.setdefault(chat_id, chat)
            return self._deliver_new(chat_id, "message", message)

    def connect_business(
        self, user_id: int, *, connection_id: str = "", first_name: str = "Op"
    ) -> str:
        """Connect the bot to a user's business account and queue the announcement.

        The bot receives a ``business_connection`` update, as on Telegram when a Telegram
        Business user adds it to their account; from then on the account's private chats
        can be played with :meth:`send_business_text`.

        Parameters
        ----------
        user_id : int
            The business account's owner.
        connection_id : str, optional
            The connection's id; a new one is made up when empty.
        first_name : str
            The owner's first name.

        Returns
        -------
        str
            The connection id, which every message of the account's chats carries.
        """
        owner: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        with self._cond:
            connection_id = connection_id or f"EMU-business-{next(self._connection_ids):06d}"
            connection = {
                "id": connection_id,
                "user": owner,
                "user_chat_id": user_id,
                "date": int(time.time()),
                "is_enabled": True,
                "rights": {"can_reply": True, "can_read_messages": True},
            }
            self._business[connection_id] = connection
            self._enqueue({"business_connection": copy.deepcopy(connection)})
        return connection_id

    def send_business_text(
        self,
        text: str,
        *,
        connection_id: str,
        user_id: int,
        chat_id: int,
        first_name: str = "User",
    ) -> int:
        """Queue a message written in a private chat of a connected business account.

        On Telegram the bot then sees every message of the account's private chats, as a
        ``business_message`` update whose message carries ``business_connection_id``: the
        chat is the one between the owner and the other person, so its id is that person's
        user id, whoever of the two wrote.

        Parameters
        ----------
        text : str
            The message (``/command`` words get ``bot_command`` entities).
        connection_id : str
            From :meth:`connect_business`.
        user_id : int
            The writer: the account's owner, or the other person (then ``chat_id``).
        chat_id : int
            The other person's user id, which is the chat's id.
        first_name : str
            The other person's first name, as the chat shows it.

        Returns
        -------
        int
            The update id.

        Raises
        ------
        ValueError
            For an unknown connection, or a writer who is not in the chat.
        """
        with self._cond:
            connection = self._business.get(connection_id)
            if connection is None:
                raise ValueError(f"no business connection {connection_id!r}; connect it first")
            owner = connection["user"]
            if chat_id <= 0 or chat_id == owner["id"]:
                raise ValueError("a business chat is the owner's private chat with someone else")
            if user_id not in (owner["id"], chat_id):
                raise ValueError("a business message is written by the owner or by chat_id")
            chat = {"id": chat_id, "type": "private", "first_name": first_name}
            sender = dict(owner) if user_id == owner["id"] else {**chat, "is_bot": False}
            sender.pop("type", None)
            message: dict[str, Any] = {
                "business_connection_id": connection_id,
                "from": sender,
                "chat": chat,
                "text": text,
            }
            entities = _command_entities(text)
            if entities:
                message["entities"] = entities
            # The account's chats number their messages apart from the bot's own chats,
            # although a business chat has the same id as the bot's chat with that person.
            return self._deliver_new(
                f"business:{connection_id}:{chat_id}", "business_message", message
            )

    def post_to_channel(
        self, text: str, *, chat_id: int = -(10**12) - 77, title: str = "Channel"
    ) -> int:
        """Queue a post in a channel the bot administers, as a ``channel_post`` update.

        As on Telegram, the post names the channel in ``sender_chat`` and has no ``from``.

        Parameters
        ----------
        text : str
            The post (``/command`` words get ``bot_command`` entities).
        chat_id : int
            The channel's id, a ``-100...`` number.
        title : str
            The channel's title.

        Returns
        -------
        int
            The update id.
        """
        if chat_id > -(10**12):
            raise ValueError("a channel's id is a -100... number")
        chat = {"id": chat_id, "type": "channel", "title": title}
        message: dict[str, Any] = {"sender_chat": dict(chat), "chat": chat, "text": text}
        entities = _command_entities(text)
        if entities:
            message["entities"] = entities
        with self._cond:
            self._chats.setdefault(chat_id, chat)
            return self._deliver_new(chat_id, "channel_post", message)

    def edit_text(self, update_id: int, text: str) -> int:
        """Queue the edit of a message played on the users' side, as its writer would.

        The update is ``edited_message``, ``edited_business_message`` or
        ``edited_channel_post`` (after the kind of the original), with the original's
        ``message_id`` and ``date``, the new text and entities, and ``edit_date``.

        Parameters
        ----------
        update_id : int
            The update that delivered the message (from :meth:`send_text`,
            :meth:`send_business_text`, :meth:`post_to_channel` or an earlier edit).
        text : str
            The message's new text.

        Returns
        -------
        int
            The update id of the edit.

        Raises
        ------
        KeyError
            If ``update_id`` did not deliver a user's message.
        """
        with self._cond:
            origin = self._origins[update_id]
            edited = copy.deepcopy(self._messages[origin])
            edited["text"] = text
            edited.pop("entities", None)
            entities = _command_entities(text)
            if entities:
                edited["entities"] = entities
            edited["edit_date"] = max(int(time.time()), edited["date"])
            # A copy, so that the original update, if still queued, keeps the old text.
            self._messages[origin] = edited
            if "business_connection_id" in edited:
                kind = "edited_business_message"
            elif edited["chat"]["type"] == "channel":
                kind = "edited_channel_post"
            else:
                kind = "edited_message"
            new_id = self._enqueue({kind: copy.deepcopy(edited)})
            self._origins[new_id] = origin
            return new_id

    def push_update(self, update: Mapping[str, Any]) -> int:
        """Queue a raw update (a callback query, a poll...) and return its id.

        Parameters
        ----------
        update : Mapping
            The update without ``update_id``, e.g. ``{"callback_query": {...}}``; it is
            delivered as given.
        """
        with self._cond:
            return self._enqueue(copy.deepcopy(dict(update)))

    def sent(self, chat_id: int | None = None) -> list[dict[str, Any]]:
        """Return what the bot sent successfully (to ``chat_id``, or to anyone), in order."""
        with self._cond:
            return self._select(chat_id)

    def rejected(self) -> list[dict[str, Any]]:
        """Return the sends that were refused, each with ``status`` and ``description``."""
        with self._cond:
            return copy.deepcopy(self._rejected)

    def wait_for_sent(
        self, n: int, *, chat_id: int | None = None, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Block until at least ``n`` messages were sent (to ``chat_id``); return them all.

        Raises
        ------
        TimeoutError
            If fewer arrived within ``timeout`` seconds; the message lists what was sent.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = self._select(chat_id)
                remaining = deadline - time.monotonic()
                if len(got) >= n or remaining <= 0:
                    break
                self._cond.wait(remaining)
        if len(got) < n:
            where = "" if chat_id is None else f" to chat {chat_id}"
            summary = [
                (record["method"], record["chat_id"], record["text"] or record["caption"])
                for record in got
            ]
            raise TimeoutError(
                f"expected {n} message(s){where} within {timeout} s, got {len(got)}: "
                f"{summary}; refused: {[r['description'] for r in self.rejected()]}"
            )
        return got

    @property
    def calls(self) -> dict[str, int]:
        """How many requests each Bot API method received (refused ones included)."""
        with self._cond:
            return dict(self._calls)

    @property
    def pending_updates(self) -> int:
        """How many updates the bot has not yet confirmed with a ``getUpdates`` offset."""
        with self._cond:
            return len(self._updates)

    @property
    def commands(self) -> list[dict[str, Any]]:
        """The command list last set with ``setMyCommands`` for the default scope."""
        with self._cond:
            return copy.deepcopy(self._commands.get("default", []))

    def file(self, file_id: str) -> bytes:
        """Return the bytes of a file the bot uploaded (a record's ``file_id``)."""
        with self._cond:
            return self._files[file_id].data

    # -- OUTAGES --

    def go_down(self) -> None:
        """Answer every request, held ones included, with 502 Bad Gateway at once.

        python-telegram-bot raises ``NetworkError`` for it.
        """
        with self._cond:
            self._down = True
        self._notify_threadsafe()

    def come_up(self) -> None:
        """End the outage started by :meth:`go_down`."""
        with self._cond:
            self._down = False
        self._notify_threadsafe()

    def set_delay(self, seconds: float) -> None:
        """Hold every request this long before answering it (0 turns the delay off)."""
        if seconds < 0:
            raise ValueError("the delay cannot be negative")
        with self._cond:
            self._delay = float(seconds)

    def fail_next(
        self,
        n: int,
        *,
        status: int = 429,
        retry_after: int = 1,
        description: str | None = None,
    ) -> None:
        """Refuse the next ``n`` sendMessage, sendPhoto or sendDocument calls.

        Parameters
        ----------
        n : int
            How many sends to refuse; they queue behind any still pending.
        status : int, default 429
            The HTTP status and ``error_code``. A 429 carries
            ``parameters.retry_after`` (python-telegram-bot raises ``RetryAfter``); 400
            gives ``BadRequest``, 403 ``Forbidden``, 5xx ``NetworkError``.
        retry_after : int, default 1
            Seconds, for a 429 only.
        description : str, optional
            Overrides Telegram's description for the status (for a 429, "Too Many
            Requests: retry after N").
        """
        if status == 429:
            text = description or f"Too Many Requests: retry after {retry_after}"
            failure = _Failure(status, text, retry_after)
        else:
            default = _DESCRIPTIONS.get(status) or HTTPStatus(status).phrase
            failure = _Failure(status, description or default, None)
        with self._cond:
            self._failures.extend([failure] * n)

    # -- SERVER --

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:  # handed to start() in the caller's thread
            self._startup_error = exc
            self._loop = None
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._close())
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> None:
        self._changed = asyncio.Event()
        # Photos and documents come in one multipart body; aiohttp's default cap is 1 MB.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._dispatch)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # Cancel a handler whose client hung up (a cancelled long poll) rather than let it
        # hold a getUpdates slot; a short shutdown timeout because stop() answers the rest.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._requested_port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def _close(self) -> None:
        with self._cond:
            self._closing = True
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _notify(self) -> None:
        # Wake every coroutine waiting in _wait_change (they hold the old event).
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._notify)

    async def _wait_change(self, seconds: float) -> None:
        event = self._changed
        assert event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def _hold(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._closing and (remaining := deadline - loop.time()) > 0:
            await self._wait_change(remaining)

    @staticmethod
    def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        return web.json_response(body, status=status)

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error(404, "Not Found")

    async def _dispatch(self, request: web.Request) -> web.Response:
        requested = request.match_info["method"]
        method = self._canonical.get(requested.lower(), requested)
        with self._cond:
            self._calls[method] += 1
            delay = self._delay
        if delay:
            await self._hold(delay)
        if self._down:
            return self._error(502, "Bad Gateway")
        token = request.match_info["token"]
        if token != self.token:
            if _TOKEN_RE.match(token):
                return self._error(401, "Unauthorized")
            return self._error(404, "Not Found")
        handler = self._methods.get(method)
        try:
            params = await self._read_params(request)
            if handler is None:
                log.info("unemulated Bot API method %s answered with true", method)
                result: Any = True
            else:
                result = await handler(params)
        except _ApiError as exc:
            return self._error(exc.status, exc.description, exc.retry_after)
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        path = request.match_info["path"]
        with self._cond:
            stored = next((f for f in self._files.values() if f.file_path == path), None)
        if stored is None:
            return self._error(404, "Not Found")
        return web.Response(body=stored.data, content_type="application/octet-stream")

    @staticmethod
    async def _read_params(request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if not request.can_read_body:
            return params
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise _ApiError(400, "Bad Request: can't parse JSON") from None
            if isinstance(body, dict):
                params.update(body)
            return params
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                params[key] = _Upload(value.filename, value.content_type, value.file.read())
            else:
                params[key] = value
        return params

    # -- STATE (call with self._cond held) --

    def _enqueue(self, update: dict[str, Any]) -> int:
        update_id = next(self._update_ids)
        self._updates.append({"update_id": update_id, **update})
        self._notify_threadsafe()
        return update_id

    def _deliver_new(self, store_key: int | str, kind: str, message: dict[str, Any]) -> int:
        self._store_message(store_key, message)
        update_id = self._enqueue({kind: message})
        self._origins[update_id] = (store_key, message["message_id"])
        return update_id

    def _store_message(self, chat_id: int | str, message: dict[str, Any]) -> dict[str, Any]:
        # Telegram numbers the messages of each chat on their own, both directions alike.
        message_id = self._last_message_id.get(chat_id, 0) + 1
        self._last_message_id[chat_id] = message_id
        message.update(message_id=message_id, date=int(time.time()))
        self._messages[(chat_id, message_id)] = message
        return message

    def _select(self, chat_id: int | None) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(record)
            for record in self._sent
            if chat_id is None or record["chat_id"] == chat_id
        ]

    def _chat(self, chat_id: int | str) -> dict[str, Any]:
        known = self._chats.get(chat_id)
        if known is not None:
            return known
        if isinstance(chat_id, int) and chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": "User"}
        if isinstance(chat_id, int) and chat_id < -(10**12):
            return {"id": chat_id, "type": "supergroup", "title": f"Group {chat_id}"}
        if isinstance(chat_id, int):
            return {"id": chat_id, "type": "group", "title": f"Group {chat_id}"}
        return {"id": -(10**12) - 1, "type": "channel", "title": chat_id, "username": chat_id}

    # -- METHODS --

    async def _true(self, params: dict[str, Any]) -> bool:
        return True

    async def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(self.bot_user)

    async def _delete_webhook(self, params: dict[str, Any]) -> bool:
        if _as_bool(params.get("drop_pending_updates", False)):
            with self._cond:
                self._updates.clear()
        return True

    async def _get_webhook_info(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            pending = len(self._updates)
        return {"url": "", "has_custom_certificate": False, "pending_update_count": pending}

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = _as_int(params.get("offset"), 0)
        limit = min(max(_as_int(params.get("limit"), MAX_LIMIT), 1), MAX_LIMIT)
        try:
            timeout = max(float(params.get("timeout") or 0), 0.0)
        except ValueError:
            raise _ApiError(400, "Bad Request: invalid timeout") from None
        with self._cond:
            self._poll_generation += 1
            generation = self._poll_generation
            if offset > 0:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            elif offset < 0:
                self._updates = self._updates[offset:]
            batch = copy.deepcopy(self._updates[:limit])
        # A newer poll must be able to see that this one was superseded.
        self._notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not batch and not self._closing and (remaining := deadline - loop.time()) > 0:
            await self._wait_change(remaining)
            with self._cond:
                if self._down:
                    raise _ApiError(502, "Bad Gateway")
                if self._poll_generation != generation:
                    raise _ApiError(409, _CONFLICT)
                batch = copy.deepcopy(self._updates[:limit])
        return batch

    def _take_failure(self) -> None:
        with self._cond:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            raise _ApiError(failure.status, failure.description, failure.retry_after)

    def _chat_id(self, params: dict[str, Any]) -> int | str:
        raw = params.get("chat_id")
        if raw is None or raw == "":
            raise _ApiError(400, "Bad Request: chat_id is empty")
        if isinstance(raw, str) and raw.startswith("@"):
            return raw
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise _ApiError(400, "Bad Request: chat not found") from None

    def _reply_target(self, params: dict[str, Any], chat_id: int | str) -> dict[str, Any] | None:
        reply = _json_value(params.get("reply_parameters"))
        allow_missing = _as_bool(params.get("allow_sending_without_reply", False))
        if isinstance(reply, dict):
            message_id = reply.get("message_id")
            chat_id = reply.get("chat_id", chat_id)
            allow_missing = allow_missing or _as_bool(reply.get("allow_sending_without_reply"))
        else:
            message_id = params.get("reply_to_message_id")
        if message_id is None or message_id == "":
            return None
        target = self._messages.get((chat_id, _as_int(message_id, 0)))
        if target is None and not allow_missing:
            raise _ApiError(400, "Bad Request: message to be replied not found")
        return target

    def _record(
        self,
        method: str,
        chat_id: int | str,
        params: dict[str, Any],
        content: dict[str, Any],
        **fields: Any,
    ) -> dict[str, Any]:
        # Store the bot's message and log the send; the Message JSON goes back to the bot.
        with self._cond:
            reply = self._reply_target(params, chat_id)
            message: dict[str, Any] = {"from": dict(self.bot_user), "chat": self._chat(chat_id)}
            message.update(content)
            if reply is not None:
                message["reply_to_message"] = copy.deepcopy(reply)
            self._store_message(chat_id, message)
            preview = _json_value(params.get("link_preview_options"))
            preview_off = isinstance(preview, dict) and _as_bool(preview.get("is_disabled"))
            record: dict[str, Any] = {
                "method": method,
                "chat_id": chat_id,
                "message_id": message["message_id"],
                "text": None,
                "caption": None,
                "parse_mode": params.get("parse_mode") or None,
                "reply_to_message_id": None if reply is None else reply["message_id"],
                "link_preview_disabled": preview_off
                or _as_bool(params.get("disable_web_page_preview", False)),
                "reply_markup": _json_value(params.get("reply_markup")),
                "file_id": None,
                "file_size": None,
                "file_name": None,
                "mime_type": None,
                "ts": time.monotonic(),
            }
            record.update(fields)
            self._sent.append(record)
            self._cond.notify_all()
            return copy.deepcopy(message)

    def _refuse(self, method: str, params: dict[str, Any], exc: _ApiError) -> None:
        with self._cond:
            self._rejected.append(
                {
                    "method": method,
                    "chat_id": params.get("chat_id"),
                    "status": exc.status,
                    "description": exc.description,
                    "ts": time.monotonic(),
                }
            )
            self._cond.notify_all()

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            chat_id = self._chat_id(params)
            self._take_failure()
            text = str(params.get("text") or "")
            visible = _visible_text(text, params.get("parse_mode"))
            if not visible.strip():
                raise _ApiError(400, "Bad Request: message text is empty")
            if len(visible) > MAX_TEXT_LENGTH:
                raise _ApiError(400, "Bad Request: message is too long")
            return self._record("sendMessage", chat_id, params, {"text": visible}, text=text)
        except _ApiError as exc:
            self._refuse("sendMessage", params, exc)
            raise

    def _caption(self, params: dict[str, Any]) -> str | None:
        caption = params.get("caption")
        if caption is None or caption == "":
            return None
        visible = _visible_text(str(caption), params.get("parse_mode"))
        if len(visible) > MAX_CAPTION_LENGTH:
            raise _ApiError(400, "Bad Request: message caption is too long")
        return str(caption)

    def _store_upload(self, value: Any, kind: str, *, image: bool) -> _StoredFile:
        with self._cond:
            known = self._files.get(value) if isinstance(value, str) else None
        if known is not None:
            return known
        if not isinstance(value, _Upload):
            if value is None or value == "":
                raise _ApiError(400, f"Bad Request: there is no {kind} in the request")
            raise _ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        if not value.data:
            raise _ApiError(400, "Bad Request: file must be non-empty")
        if image and not value.data.startswith(_IMAGE_MAGIC):
            raise _ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
        number = next(self._file_ids)
        suffix = value.filename.rsplit(".", 1)[-1] if "." in value.filename else "bin"
        stored = _StoredFile(
            file_id=f"EMU-{kind}-{number:06d}",
            file_unique_id=f"U{number:06d}",
            file_path=f"{kind}s/file_{number}.{suffix}",
            data=value.data,
        )
        with self._cond:
            self._files[stored.file_id] = stored
        return stored

    async def _send_photo(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            chat_id = self._chat_id(params)
            self._take_failure()
            caption = self._caption(params)
            upload = params.get("photo")
            stored = self._store_upload(upload, "photo", image=True)
        except _ApiError as exc:
            self._refuse("sendPhoto", params, exc)
            raise
        width, height = _image_size(stored.data)
        photo = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "width": width,
            "height": height,
        }
        content: dict[str, Any] = {"photo": [photo]}
        if caption is not None:
            content["caption"] = _visible_text(caption, params.get("parse_mode"))
        return self._record(
            "sendPhoto",
            chat_id,
            params,
            content,
            caption=caption,
            file_id=stored.file_id,
            file_size=len(stored.data),
            file_name=upload.filename if isinstance(upload, _Upload) else None,
            mime_type=upload.content_type if isinstance(upload, _Upload) else None,
        )

    async def _send_document(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            chat_id = self._chat_id(params)
            self._take_failure()
            caption = self._caption(params)
            upload = params.get("document")
            stored = self._store_upload(upload, "document", image=False)
        except _ApiError as exc:
            self._refuse("sendDocument", params, exc)
            raise
        name = upload.filename if isinstance(upload, _Upload) else stored.file_path
        mime = upload.content_type if isinstance(upload, _Upload) else "application/octet-stream"
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": name,
            "mime_type": mime,
            "file_size": len(stored.data),
        }
        content: dict[str, Any] = {"document": document}
        if caption is not None:
            content["caption"] = _visible_text(caption, params.get("parse_mode"))
        return self._record(
            "sendDocument",
            chat_id,
            params,
            content,
            caption=caption,
            file_id=stored.file_id,
            file_size=len(stored.data),
            file_name=name,
            mime_type=mime,
        )

    async def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            stored = self._files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    @staticmethod
    def _scope_key(params: dict[str, Any]) -> str:
        scope = _json_value(params.get("scope"))
        language = params.get("language_code") or ""
        if not scope or scope == {"type": "default"}:
            return "default" if not language else f"default/{language}"
        return json.dumps(scope, sort_keys=True) + (f"/{language}" if language else "")

    async def _set_my_commands(self, params: dict[str, Any]) -> bool:
        commands = _json_value(params.get("commands"))
        if not isinstance(commands, list):
            raise _ApiError(400, "Bad Request: can't parse commands JSON object")
        for command in commands:
            name = command.get("command", "") if isinstance(command, dict) else ""
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise _ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
        with self._cond:
            self._commands[self._scope_key(params)] = commands
        return True

    async def _get_my_commands(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._commands.get(self._scope_key(params), []))

    async def _delete_my_commands(self, params: dict[str, Any]) -> bool:
        with self._cond:
            self._commands.pop(self._scope_key(params), None)
        return True
