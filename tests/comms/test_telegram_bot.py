"""The operator bot: the real python-telegram-bot client against the loopback Bot API
emulator, on a state directory written by a real session."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sovereign.comms.telegram import (
    ALLOWED_ENV,
    BASE_URL_ENV,
    TOKEN_ENV,
    OperatorBot,
    TelegramSettings,
)
from sovereign.config import Config, load_config
from sovereign.data.loaders import load_ohlcv
from sovereign.memory.audit import AuditLog, governance_path
from sovereign.memory.governance import DEPLOYED, ROLLED_BACK, GovernanceStore
from sovereign.session import run_session
from sovereign.testing.telegram import TelegramEmulator

DEMO = Path(__file__).resolve().parents[2] / "examples" / "selfmod-demo.toml"
# Minute bars whose Volatile regime drifts down: a weakness the loop finds and deploys a rule for.
PLANTED = "synthetic:20x16000:drift=Volatile@-1"
TOKEN = "987654:SECRET-token_value"
OPERATOR = 111
STRANGER = 222
GROUP_MEMBER = 333
CUSTOMER = 444  # someone the operator talks to through their business account


def demo_config(**telegram: Any) -> Config:
    config = load_config(DEMO)
    return msgspec.structs.replace(
        config,
        engine=msgspec.structs.replace(config.engine, account="ops-1"),
        telegram=msgspec.structs.replace(
            config.telegram, retry_initial_s=0.05, retry_max_s=0.2, **telegram
        ),
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> tuple[Path, Config]:
    """A state directory with trading state, deployed rules and an audit log."""
    state_dir = tmp_path_factory.mktemp("ops") / "state"
    config = demo_config()
    run_session(
        config,
        load_ohlcv(PLANTED, seed=config.engine.seed),
        runtime="local",
        mode="paper",
        state_dir=state_dir,
        out_dir=None,
        run_id="ops",
    )
    with GovernanceStore(state_dir) as store:
        assert [r for r in store.history(limit=50) if r.status == DEPLOYED], "no rule deployed"
    return state_dir, config


@pytest.fixture
def emulator():
    em = TelegramEmulator(token=TOKEN)
    em.start()
    yield em
    em.stop()


def settings_for(em: TelegramEmulator, config: Config) -> TelegramSettings:
    env = {TOKEN_ENV: TOKEN, ALLOWED_ENV: f"{OPERATOR}", BASE_URL_ENV: em.base_url}
    settings = TelegramSettings.from_env(config, env)
    assert settings is not None
    return settings


def start_bot(em: TelegramEmulator, state_dir: Path, config: Config, **kw: Any) -> OperatorBot:
    bot = OperatorBot(settings_for(em, config), state_dir, config, poll_timeout_s=1, **kw)
    bot.start()
    assert bot.connected
    return bot


def ask(em: TelegramEmulator, text: str, *, user: int = OPERATOR) -> str:
    before = len(em.sent(user))
    em.send_text(text, user_id=user)
    em.wait_for_sent(before + 1, chat_id=user, timeout=15)
    time.sleep(0.2)  # a split reply's later parts
    return "\n".join(r["text"] for r in em.sent(user)[before:])


def wait_for_text(em: TelegramEmulator, chat: int, needle: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in em.sent(chat):
            if needle in (record["text"] or ""):
                return str(record["text"])
        time.sleep(0.05)
    raise AssertionError(f"nothing containing {needle!r} was sent to {chat}")


def settle(em: TelegramEmulator) -> None:
    deadline = time.monotonic() + 10
    while em.pending_updates and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)


def answered_chats(em: TelegramEmulator) -> list[int | str]:
    return [r["chat_id"] for r in em.sent()]


def test_an_operator_runs_every_command(state, emulator) -> None:
    state_dir, config = state
    bot = start_bot(emulator, state_dir, config)
    try:
        assert "/rollback <id>" in ask(emulator, "/help")
        assert "/capital" in ask(emulator, "/start")
        status = ask(emulator, "/status")
        assert "account ops-1" in status and "trading state" in status and "rules" in status
        capital = ask(emulator, "/capital")
        for word in ("equity", "cash", "day P&L", "drawdown", "exposure"):
            assert word in capital
        constitution = ask(emulator, "/constitution")
        assert config.build_constitution().fingerprint in constitution
        assert "max_drawdown              10.00%" in constitution
        with GovernanceStore(state_dir) as store:
            book = store.current("account/ops-1")
            newest = store.history("account/ops-1", limit=1)[0]
        rules = ask(emulator, "/rules")
        assert f"rule set v{book.version}" in rules
        assert all(r.rule_id in rules for r in book.rules)
        history = ask(emulator, "/history")
        assert history.startswith("Modifications of account ops-1")
        assert f"#{newest.id} " in history
        assert "takes a page number" in ask(emulator, "/history abc")
        assert "only" in ask(emulator, "/history 999")
        readiness = ask(emulator, "/readiness")
        assert "Live readiness: NOT READY" in readiness and "[x] audit log intact" in readiness
        assert "broker is not the simulator" in readiness
        # Arguments are validated with clear replies.
        bad = ask(emulator, "/rollback abc")
        assert "needs a modification number" in bad and "'abc'" in bad
        assert "usage: /rollback <id>" in ask(emulator, "/rollback")
        assert "no modification 99999" in ask(emulator, "/rollback 99999").lower()
        assert "takes no arguments" in ask(emulator, "/capital now")
        assert "Unknown command /sell" in ask(emulator, "/sell AAPL")
        assert "Commands start with /" in ask(emulator, "hello")
        assert "/status" in ask(emulator, "/help@sovereign_bot")
    finally:
        bot.stop()
    assert bot.counters.denied == 0 and bot.counters.errors == 0
    assert emulator.commands and {c["command"] for c in emulator.commands} >= {"rules", "rollback"}


def test_strangers_and_group_members_get_nothing_and_are_audited(state, emulator) -> None:
    state_dir, config = state
    bot = start_bot(emulator, state_dir, config)
    try:
        assert ask(emulator, "/capital", user=STRANGER) == "Not authorised."
        emulator.send_text("/rollback 1", user_id=STRANGER)
        emulator.send_text("/rules", user_id=GROUP_MEMBER, chat_type="group")
        # An operator in a group gets told where commands work, and no data.
        emulator.send_text("/capital", user_id=OPERATOR, chat_type="group")
        settle(emulator)
    finally:
        bot.stop()
    assert len(emulator.sent(STRANGER)) == 1  # rate-limited: one refusal per window
    # Nothing is ever said in a group; the operator is told where commands work in their
    # own private chat instead, so the group does not learn who operates the bot.
    assert emulator.sent(-GROUP_MEMBER) == [] and emulator.sent(-OPERATOR) == []
    (hint,) = emulator.sent(OPERATOR)
    assert hint["text"] == "Operator commands work only in a private chat."
    with AuditLog(governance_path(state_dir)) as audit:
        denied = audit.entries(action="telegram_denied")
        assert audit.verify().ok
    by_user = {(e.payload["user_id"], e.payload["chat_type"]) for e in denied}
    assert {(STRANGER, "private"), (GROUP_MEMBER, "group"), (OPERATOR, "group")} <= by_user
    assert any(e.payload["command"] == "/rollback" for e in denied)
    assert bot.counters.denied == 4
    with GovernanceStore(state_dir) as store:  # the stranger's rollback did nothing
        assert not [r for r in store.history(limit=100) if r.status == ROLLED_BACK]


def test_the_operator_writing_to_someone_else_through_a_business_account_gets_no_answer(
    state, emulator, caplog
) -> None:
    state_dir, config = state
    caplog.set_level(logging.INFO, logger="sovereign.telegram")
    bot = start_bot(emulator, state_dir, config)
    try:
        connection = emulator.connect_business(OPERATOR)
        status = emulator.send_business_text(
            "/status", connection_id=connection, user_id=OPERATOR, chat_id=CUSTOMER
        )
        emulator.send_business_text(
            "/rollback 99999", connection_id=connection, user_id=OPERATOR, chat_id=CUSTOMER
        )
        emulator.edit_text(status, "/capital")
        emulator.send_business_text(
            "/help my private words", connection_id=connection, user_id=CUSTOMER, chat_id=CUSTOMER
        )
        # Updates are handled in order: once this is answered, the ones above were handled.
        assert "/rollback <id>" in ask(emulator, "/help")
    finally:
        bot.stop()
    assert emulator.sent(CUSTOMER) == []
    assert answered_chats(emulator) == [OPERATOR]
    st = bot.stats()
    assert st["commands"] == 1 and st["denied"] == 0
    assert st["ignored_updates"] == st["ignored_business"] == 5
    assert "ignored" in caplog.text and "my private words" not in caplog.text


def test_an_edited_command_does_not_run_again(state, emulator) -> None:
    state_dir, config = state
    bot = start_bot(emulator, state_dir, config)
    try:
        status = emulator.send_text("/status", user_id=OPERATOR)
        emulator.wait_for_sent(1, chat_id=OPERATOR, timeout=15)
        emulator.edit_text(status, "/status")
        emulator.edit_text(status, "/rollback 99999")
        stranger = emulator.send_text("hello", user_id=STRANGER)
        emulator.edit_text(stranger, "/capital")
        assert "/rollback <id>" in ask(emulator, "/help")
    finally:
        bot.stop()
    first, help_reply = emulator.sent(OPERATOR)
    assert first["text"].startswith("Status of") and "/rollback <id>" in help_reply["text"]
    assert answered_chats(emulator) == [OPERATOR, STRANGER, OPERATOR]  # one refusal, once
    st = bot.stats()
    assert st["commands"] == 2 and st["denied"] == 1
    assert st["ignored_updates"] == st["ignored_edited"] == 3


def test_channel_posts_and_their_edits_get_no_answer(state, emulator) -> None:
    state_dir, config = state
    bot = start_bot(emulator, state_dir, config)
    channel = -(10**12) - OPERATOR
    try:
        post = emulator.post_to_channel("/status", chat_id=channel)
        emulator.edit_text(post, "/rollback 99999")
        assert "/rollback <id>" in ask(emulator, "/help")
    finally:
        bot.stop()
    assert emulator.sent(channel) == [] and answered_chats(emulator) == [OPERATOR]
    st = bot.stats()
    assert st["commands"] == 1 and st["ignored_updates"] == st["ignored_channel"] == 2


def test_a_message_in_a_private_chat_that_is_not_the_senders_own_gets_no_answer(
    state, emulator
) -> None:
    # Telegram sends no such message outside a business connection; if one ever came,
    # answering it would still write into another person's chat.
    state_dir, config = state
    bot = start_bot(emulator, state_dir, config)
    sender = {"id": OPERATOR, "is_bot": False, "first_name": "Op"}
    chat = {"id": CUSTOMER, "type": "private", "first_name": "Customer"}
    entities = [{"type": "bot_command", "offset": 0, "length": 7}]
    message = {"message_id": 1, "date": int(time.time()), "from": sender, "text": "/status"}
    try:
        emulator.push_update({"message": {**message, "chat": chat, "entities": entities}})
        emulator.push_update(
            {
                "message": {
                    **message,
                    "message_id": 2,
                    "chat": {**chat, "id": OPERATOR, "first_name": "Op"},
                    "entities": entities,
                    "business_connection_id": "forged",
                }
            }
        )
        assert "/rollback <id>" in ask(emulator, "/help")
    finally:
        bot.stop()
    assert answered_chats(emulator) == [OPERATOR]
    st = bot.stats()
    assert st["commands"] == 1 and st["ignored_updates"] == 2
    assert st["ignored_not_own_chat"] == st["ignored_business"] == 1


def test_the_token_never_reaches_a_log(state, emulator, caplog) -> None:
    state_dir, config = state
    caplog.set_level(logging.DEBUG)
    bot = start_bot(emulator, state_dir, config)
    try:
        ask(emulator, "/status")
        ask(emulator, "/capital", user=STRANGER)
        # Whatever logs it (a library logging a request URL, an error), it is redacted.
        logging.getLogger("somewhere").warning("POST %s/bot%s/sendMessage", "http://x", TOKEN)
    finally:
        bot.stop()
    assert caplog.records
    assert not any(TOKEN in r.getMessage() for r in caplog.records)
    assert "<telegram-token>" in caplog.text


def test_without_a_token_there_is_no_bot_and_nothing_fails(state) -> None:
    _, config = state
    assert TelegramSettings.from_env(config, {}) is None
    assert TelegramSettings.from_env(config, {TOKEN_ENV: "  "}) is None
    with pytest.raises(ValueError, match=ALLOWED_ENV):
        TelegramSettings.from_env(config, {TOKEN_ENV: TOKEN, ALLOWED_ENV: "12,abc"})


def test_a_rollback_from_telegram_changes_the_running_rule_set(tmp_path, emulator) -> None:
    config = demo_config()
    data = load_ohlcv(PLANTED, seed=config.engine.seed)
    state_dir = tmp_path / "state"
    seen: dict[str, Any] = {}
    bot = OperatorBot(
        settings_for(emulator, config),
        state_dir,
        config,
        scope="account/ops-1",
        poll_timeout_s=1,
    )
    bot.start()

    def on_progress(p: Any) -> None:
        shard = seen["engine"].runtime.actors["sovereign/shard/0"].strategy
        if "reply" not in seen:
            with GovernanceStore(state_dir) as store:
                deployed = [r for r in store.history(limit=50) if r.status == DEPLOYED]
            if deployed and shard.compiled is not None:
                first = min(deployed, key=lambda r: r.id)
                seen["id"] = first.id
                emulator.send_text(f"/rollback {first.id}", user_id=OPERATOR)
                seen["reply"] = wait_for_text(emulator, OPERATOR, f"Rolled back #{first.id}")
                seen["step"] = p.step
        elif p.step >= seen["step"] + 2 and "after" not in seen:
            seen["after"] = (shard.rules_version, shard.compiled)
            seen["engine"].request_stop()  # what follows the rollback is not under test

    try:
        out = run_session(
            config,
            data,
            runtime="local",
            mode="paper",
            state_dir=state_dir,
            out_dir=None,
            run_id="tg-rollback",
            on_progress=on_progress,
            on_started=lambda engine: seen.setdefault("engine", engine),
            on_notification=bot.notify,
        )
    finally:
        bot.stop()
    assert "reply" in seen, "no rule was deployed early enough to roll back"
    assert seen["reply"].startswith(f"Rolled back #{seen['id']} in account/ops-1")
    with GovernanceStore(state_dir) as store:
        record = store.get(seen["id"])
        book = store.current("account/ops-1")
    assert record is not None and record.status == ROLLED_BACK
    assert record.rolled_back_by == f"telegram:{OPERATOR}"
    version, compiled = seen["after"]
    assert version >= 1 and (compiled is None or book.rules)
    stats = {s.role: s.counters for s in out.result.actor_stats}
    assert stats["selfmod"]["external_rule_changes"] >= 1
    # The rollback itself was announced to the operators.
    assert any("rolled back" in r["text"].lower() for r in emulator.sent(OPERATOR))


def outage_session(
    emulator: TelegramEmulator, tmp_path: Path, name: str, **telegram: Any
) -> tuple[Any, OperatorBot, dict[str, Any]]:
    """A paper session whose Bot API is down from the start until half-way through."""
    config = demo_config(**telegram)
    config = msgspec.structs.replace(
        config,
        notifications=msgspec.structs.replace(
            config.notifications, telegram={"trade_closed": "on", "daily_summary": "off"}
        ),
    )
    data = load_ohlcv("sample", symbols=["AAPL", "IBM", "MSFT"], end="2003-12-31")
    bot = OperatorBot(settings_for(emulator, config), tmp_path / name, config, poll_timeout_s=1)
    bot.start()
    emulator.go_down()
    seen: dict[str, Any] = {}
    total = len(data.timestamps)

    def on_progress(p: Any) -> None:
        if p.step >= total // 2 and "pending_at_return" not in seen:
            seen["pending_at_return"] = bot.stats()["pending"]
            seen["retries_at_return"] = bot.counters.retries
            emulator.come_up()

    try:
        out = run_session(
            config,
            data,
            runtime="local",
            mode="paper",
            state_dir=tmp_path / name,
            out_dir=None,
            run_id=name,
            on_progress=on_progress,
            on_notification=bot.notify,
        )
    finally:
        bot.stop(drain_s=30)
    seen["reference"] = run_session(
        config,
        data,
        runtime="local",
        mode="paper",
        state_dir=tmp_path / f"{name}-reference",
        out_dir=None,
        run_id=name,
    )
    return out, bot, seen


def test_during_a_telegram_outage_trading_goes_on_and_notifications_arrive_later(
    tmp_path, emulator
) -> None:
    out, bot, seen = outage_session(emulator, tmp_path, "outage")
    # Trading did exactly what it does with no Telegram at all.
    ref = seen["reference"]
    assert out.result.steps == ref.result.steps
    assert out.metrics["total_trades"] == ref.metrics["total_trades"] > 0
    assert out.metrics["total_pnl"] == pytest.approx(ref.metrics["total_pnl"])
    # Notifications piled up while Telegram was down and were delivered after.
    assert seen["pending_at_return"] > 0 and seen["retries_at_return"] > 0
    c = bot.counters
    assert c.dropped_queue_full == c.dropped_expired == c.failed == 0
    assert c.sent == c.queued > 0
    delivered = [r for r in emulator.sent(OPERATOR) if r["method"] == "sendMessage"]
    assert len(delivered) == c.sent
    trades = [r for r in delivered if " trade " in r["text"]]
    assert len(trades) == out.metrics["total_trades"]


def test_an_outage_longer_than_the_queue_drops_the_oldest_and_counts_them(
    tmp_path, emulator
) -> None:
    out, bot, seen = outage_session(emulator, tmp_path, "small-queue", queue_size=3)
    assert out.result.steps == seen["reference"].result.steps
    c = bot.counters
    assert c.dropped_queue_full > 0
    assert c.sent + c.dropped_queue_full + c.dropped_expired + c.failed == c.queued
    assert len([r for r in emulator.sent(OPERATOR) if r["method"] == "sendMessage"]) == c.sent


def test_long_notifications_are_split_within_telegrams_limit(state, emulator) -> None:
    from sovereign.messages import Notification

    state_dir, config = state
    bot = start_bot(emulator, state_dir, config)
    long_text = "\n".join(f"line {i}: " + "x" * 90 for i in range(120))  # ~12,000 chars
    try:
        bot.notify(
            Notification(
                msg_id="n1",
                ts_event=1,
                ts_init=1,
                kind="modification_deployed",
                level="info",
                title="deployed",
                text=long_text,
            )
        )
        emulator.wait_for_sent(3, chat_id=OPERATOR, timeout=15)
    finally:
        bot.stop()
    parts = [r["text"] for r in emulator.sent(OPERATOR)]
    assert len(parts) >= 3 and all(len(p) <= 4096 for p in parts)
    assert "\n".join(parts) == f"deployed\n{long_text}"
    assert emulator.rejected() == []


def test_sovereign_operator_serves_a_state_dir_with_no_session_running(state, emulator) -> None:
    import os
    import signal
    import subprocess

    state_dir, _ = state
    env = {
        **os.environ,
        TOKEN_ENV: TOKEN,
        ALLOWED_ENV: str(OPERATOR),
        BASE_URL_ENV: emulator.base_url,
    }
    from tests.kit import at_a_terminal

    cmd = at_a_terminal("sovereign.cli", "-v", "operator", "--state", str(state_dir))
    cmd += ["--config", str(DEMO), "--account", "ops-1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "getUpdates" not in emulator.calls and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert "equity" in ask(emulator, "/capital")
        assert ask(emulator, "/capital", user=STRANGER) == "Not authorised."
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "operator bot serving" in stdout
    assert TOKEN not in stdout + stderr
    assert "<telegram-token>" in stderr or "HTTP Request" not in stderr

    no_token = {k: v for k, v in env.items() if k != TOKEN_ENV}
    missing = subprocess.run(
        cmd, env=no_token, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 2 and TOKEN_ENV in missing.stderr
    bad = subprocess.run(
        cmd,
        env={**env, TOKEN_ENV: "987654:WRONG-token"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "refused the bot token" in bad.stderr
    assert "WRONG-token" not in bad.stdout + bad.stderr


def test_the_console_asks_the_same_core(state) -> None:
    import subprocess
    import sys

    state_dir, _ = state
    base = [sys.executable, "-m", "sovereign.cli", "ask"]
    tail = ["--state", str(state_dir), "--config", str(DEMO), "--account", "ops-1"]
    capital = subprocess.run([*base, "capital", *tail], capture_output=True, text=True, check=True)
    assert capital.stdout.startswith("Capital of account ops-1")
    page = subprocess.run(
        [*base, "history", "abc", *tail], capture_output=True, text=True, check=True
    )
    assert "takes a page number" in page.stdout


def test_the_daily_summary_arrives_as_an_equity_chart(state, emulator) -> None:
    import numpy as np

    from sovereign.messages import DailySummary, NDArray

    state_dir, config = state
    bot = start_bot(emulator, state_dir, config)
    day = 1_704_205_800_000_000_000  # 2024-01-02 14:30 UTC
    ts = day + np.arange(5, dtype=np.int64) * 3_600_000_000_000
    try:
        bot.notify(
            DailySummary(
                msg_id="d1",
                ts_event=int(ts[-1]),
                ts_init=int(ts[-1]),
                kind="daily_summary",
                level="info",
                title="daily summary 2024-01-02: equity 101,000.00 (+1.00 %)",
                text="2 trades (1 won)",
                data={"day_start_ts": day},
                session_date="2024-01-02",
                start_equity=100_000.0,
                end_equity=101_000.0,
                high_water_mark=101_000.0,
                drawdown=0.0,
                trades=2,
                wins=1,
                pnl=1_000.0,
                complete=True,
                equity_ts=NDArray.from_numpy(ts),
                equity=NDArray.from_numpy(np.linspace(100_000.0, 101_000.0, 5)),
            )
        )
        emulator.wait_for_sent(2, chat_id=OPERATOR, timeout=20)
    finally:
        bot.stop()
    photo, details = emulator.sent(OPERATOR)[:2]
    assert photo["method"] == "sendPhoto" and photo["caption"].startswith("daily summary")
    assert emulator.file(photo["file_id"]).startswith(b"\x89PNG")
    assert details["text"] == "2 trades (1 won)"
    assert bot.counters.photos == 1
