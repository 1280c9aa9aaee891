"""The Telegram emulator against the real python-telegram-bot (Bot, Application, Updater)."""

from __future__ import annotations

import asyncio
import datetime as dtm
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import pytest
from telegram import Bot, Update
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TimedOut
from telegram.ext import ApplicationBuilder, CommandHandler, ContextTypes

from sovereign.testing.telegram import TelegramEmulator


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.fixture
def emulator() -> Iterator[TelegramEmulator]:
    em = TelegramEmulator()
    em.start()
    try:
        yield em
    finally:
        em.stop()
    assert not any(t.name == "telegram-emulator" for t in threading.enumerate())


def _bot(em: TelegramEmulator, token: str | None = None) -> Bot:
    return Bot(token or em.token, base_url=em.base_url, base_file_url=em.base_file_url)


def test_application_ping_command_round_trip_replies_pong(emulator: TelegramEmulator) -> None:
    async def ping(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await update.message.reply_text("pong")

    async def scenario() -> float:
        app = (
            ApplicationBuilder()
            .token(emulator.token)
            .base_url(emulator.base_url)
            .base_file_url(emulator.base_file_url)
            .build()
        )
        app.add_handler(CommandHandler("ping", ping))
        await app.initialize()
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0.0, timeout=dtm.timedelta(seconds=5))
        emulator.send_text("/ping", user_id=1)
        # wait_for_sent blocks, so it must not run on the bot's loop.
        await asyncio.to_thread(emulator.wait_for_sent, 1, chat_id=1)
        started = time.monotonic()
        await app.updater.stop()
        await app.stop()
        await app.shutdown()
        return time.monotonic() - started

    shutdown_s = asyncio.run(scenario())

    assert shutdown_s < 2.0
    [reply] = emulator.sent(chat_id=1)
    assert (reply["method"], reply["text"]) == ("sendMessage", "pong")
    calls = emulator.calls
    assert calls["getMe"] == 1
    assert calls["deleteWebhook"] == 1
    assert calls["getUpdates"] >= 2
    # The Updater's last getUpdates confirmed the /ping update.
    assert emulator.pending_updates == 0


def test_bot_send_photo_records_caption_and_size(emulator: TelegramEmulator) -> None:
    png = _png_1x1()

    async def scenario() -> None:
        async with _bot(emulator) as bot:
            message = await bot.send_photo(chat_id=5, photo=png, caption="equity curve")
            assert message.caption == "equity curve"
            assert message.photo[-1].file_size == len(png)
            assert (message.photo[-1].width, message.photo[-1].height) == (1, 1)
            file = await bot.get_file(message.photo[-1].file_id)
            assert bytes(await file.download_as_bytearray()) == png

    asyncio.run(scenario())

    [record] = emulator.sent(chat_id=5)
    assert record["method"] == "sendPhoto"
    assert record["caption"] == "equity curve"
    assert record["file_size"] == len(png)
    assert emulator.file(record["file_id"]) == png


def test_send_message_over_4096_characters_raises_bad_request(
    emulator: TelegramEmulator,
) -> None:
    async def scenario() -> None:
        async with _bot(emulator) as bot:
            await bot.send_message(chat_id=5, text="x" * 4096)
            with pytest.raises(BadRequest, match=r"(?i)message is too long"):
                await bot.send_message(chat_id=5, text="x" * 5000)
            # HTML tags do not count towards the limit, as on Telegram.
            await bot.send_message(chat_id=5, text="<b>" + "y" * 4096 + "</b>", parse_mode="HTML")
            with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
                await bot.send_message(chat_id=5, text="<b>cut in half", parse_mode="HTML")
            with pytest.raises(BadRequest, match=r"(?i)caption is too long"):
                await bot.send_photo(chat_id=5, photo=_png_1x1(), caption="c" * 1025)

    asyncio.run(scenario())

    assert [len(r["text"]) for r in emulator.sent()] == [4096, 4096 + 7]
    assert [r["description"] for r in emulator.rejected()] == [
        "Bad Request: message is too long",
        "Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"b\"",
        "Bad Request: message caption is too long",
    ]


def test_go_down_raises_network_error_quickly_then_come_up_recovers(
    emulator: TelegramEmulator,
) -> None:
    async def scenario() -> float:
        async with _bot(emulator) as bot:
            emulator.go_down()
            started = time.monotonic()
            with pytest.raises(NetworkError):
                await bot.send_message(chat_id=5, text="lost")
            elapsed = time.monotonic() - started
            emulator.come_up()
            await bot.send_message(chat_id=5, text="back")
            return elapsed

    assert asyncio.run(scenario()) < 1.0
    assert [r["text"] for r in emulator.sent()] == ["back"]


def test_fail_next_429_raises_retry_after(emulator: TelegramEmulator) -> None:
    async def scenario() -> None:
        async with _bot(emulator) as bot:
            emulator.fail_next(1, status=429, retry_after=1)
            with pytest.raises(RetryAfter) as caught:
                await bot.send_message(chat_id=5, text="flood")
            # PTB 22 returns an int unless PTB_TIMEDELTA opts in to timedelta.
            assert caught.value.retry_after in (1, dtm.timedelta(seconds=1))
            await bot.send_message(chat_id=5, text="after the flood")

    asyncio.run(scenario())

    assert [r["text"] for r in emulator.sent()] == ["after the flood"]
    assert emulator.calls["sendMessage"] == 2


def test_wrong_token_raises_invalid_token(emulator: TelegramEmulator) -> None:
    async def scenario() -> None:
        bot = _bot(emulator, token="654321:WRONG-TOKEN")
        with pytest.raises(InvalidToken):
            await bot.initialize()
        await bot.shutdown()

    asyncio.run(scenario())


def test_group_message_carries_group_chat_and_sender_id(emulator: TelegramEmulator) -> None:
    emulator.send_text("/status@sovereign_test_bot", user_id=7, chat_type="group", username="op")
    emulator.send_text("hello", user_id=7)

    async def scenario() -> tuple[Update, ...]:
        async with _bot(emulator) as bot:
            return await bot.get_updates(timeout=0)

    group, private = asyncio.run(scenario())

    assert group.effective_chat is not None and group.effective_user is not None
    assert group.effective_chat.type == "group"
    assert group.effective_chat.id == -7
    assert group.effective_user.id == 7
    assert group.effective_user.username == "op"
    assert group.message is not None and group.message.entities[0].type == "bot_command"
    assert private.effective_chat is not None and private.effective_chat.type == "private"
    assert private.effective_chat.id == 7


def test_get_updates_long_poll_wakes_on_message_and_offset_confirms(
    emulator: TelegramEmulator,
) -> None:
    async def scenario() -> tuple[tuple[Update, ...], float, tuple[Update, ...]]:
        async with _bot(emulator) as bot:
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, lambda: emulator.send_text("late", user_id=3))
            started = time.monotonic()
            first = await bot.get_updates(timeout=5)
            waited = time.monotonic() - started
            again = await bot.get_updates(offset=first[-1].update_id + 1, timeout=0)
            return first, waited, again

    first, waited, again = asyncio.run(scenario())

    assert [u.message.text for u in first if u.message] == ["late"]
    assert 0.15 < waited < 2.0
    assert again == ()
    assert emulator.pending_updates == 0


def test_set_delay_beyond_read_timeout_raises_timed_out(emulator: TelegramEmulator) -> None:
    async def scenario() -> None:
        async with _bot(emulator) as bot:
            emulator.set_delay(1.0)
            with pytest.raises(TimedOut):
                await bot.send_message(chat_id=5, text="slow", read_timeout=0.2)
            emulator.set_delay(0)

    asyncio.run(scenario())


def test_commands_round_trip_and_unknown_method_answers_true(
    emulator: TelegramEmulator,
) -> None:
    async def scenario() -> None:
        async with _bot(emulator) as bot:
            assert await bot.set_my_commands([("status", "Show the book")])
            [command] = await bot.get_my_commands()
            assert (command.command, command.description) == ("status", "Show the book")
            assert await bot.send_chat_action(chat_id=5, action="typing")
            assert await bot.do_api_request("someFutureMethod", api_kwargs={"chat_id": 5})

    asyncio.run(scenario())

    assert emulator.commands == [{"command": "status", "description": "Show the book"}]
    assert emulator.calls["someFutureMethod"] == 1


def test_wait_for_sent_timeout_names_what_was_sent(emulator: TelegramEmulator) -> None:
    async def scenario() -> None:
        async with _bot(emulator) as bot:
            await bot.send_message(chat_id=5, text="only one")

    asyncio.run(scenario())

    with pytest.raises(TimeoutError, match="only one"):
        emulator.wait_for_sent(2, chat_id=5, timeout=0.1)


def test_edits_business_chats_and_channel_posts_arrive_as_telegram_shapes_them(
    emulator: TelegramEmulator,
) -> None:
    first = emulator.send_text("/status", user_id=7)
    emulator.edit_text(first, "/rollback 3")
    connection = emulator.connect_business(7)
    written = emulator.send_business_text(
        "/capital", connection_id=connection, user_id=7, chat_id=9
    )
    emulator.send_business_text("hi", connection_id=connection, user_id=9, chat_id=9)
    emulator.edit_text(written, "/capital now")
    post = emulator.post_to_channel("/status", chat_id=-(10**12) - 5)
    emulator.edit_text(post, "/help")
    with pytest.raises(ValueError, match="owner or by chat_id"):
        emulator.send_business_text("x", connection_id=connection, user_id=8, chat_id=9)
    with pytest.raises(ValueError, match="connect it first"):
        emulator.send_business_text("x", connection_id="nope", user_id=7, chat_id=9)

    async def scenario() -> tuple[Update, ...]:
        async with _bot(emulator) as bot:
            return await bot.get_updates(timeout=0)

    new, edit, connect, owner, other, business_edit, channel, channel_edit = asyncio.run(scenario())

    assert new.message is not None and edit.message is None
    assert edit.edited_message is not None and edit.edited_message.text == "/rollback 3"
    assert edit.edited_message.message_id == new.message.message_id
    assert edit.edited_message.edit_date is not None
    assert new.message.text == "/status"  # the queued original kept its text
    assert connect.business_connection is not None
    assert connect.business_connection.user.id == 7 and connect.business_connection.is_enabled
    for update, writer in ((owner, 7), (other, 9)):
        message = update.business_message
        assert update.message is None and message is not None
        assert message.business_connection_id == connection
        assert message.chat.type == "private" and message.chat.id == 9
        assert message.from_user is not None and message.from_user.id == writer
    assert owner.business_message is not None
    assert owner.business_message.entities[0].type == "bot_command"
    edited = business_edit.edited_business_message
    assert edited is not None and edited.business_connection_id == connection
    assert edited.text == "/capital now"
    assert edited.message_id == owner.business_message.message_id
    assert channel.channel_post is not None and channel.effective_user is None
    assert channel.channel_post.chat.type == "channel"
    assert channel.channel_post.sender_chat is not None
    assert channel.channel_post.sender_chat.id == -(10**12) - 5
    assert channel_edit.edited_channel_post is not None
    assert channel_edit.edited_channel_post.text == "/help"
