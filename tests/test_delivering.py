"""MailboxService.delivering (issue 19.3): the one way leased mail is handed out, used by REST, MCP
and the hooks. A real service on a real SQLite file; no transport."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from claude_mailbox.config import Config
from claude_mailbox.service import MailboxService


def run(home: Path, scenario: Callable[[MailboxService], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        service = MailboxService(Config(db_path=home / "delivering.db", lease_seconds=30))
        await service.open()
        try:
            await service.send("d-alice", "d-bob", "hello")
            return await scenario(service)
        finally:
            await service.close()

    return asyncio.run(main())


def test_written_answers_acknowledge_their_mail(tmp_path: Path) -> None:
    async def scenario(service: MailboxService) -> tuple[int, int]:
        async with service.delivering() as delivery:
            lease = await service.take("d-bob")
            delivery.written = True
        return len(lease.messages), (await service.peek("d-bob"))[0]

    assert run(tmp_path, scenario) == (1, 0)


def test_an_answer_not_written_gives_the_mail_back_at_once(tmp_path: Path) -> None:
    async def scenario(service: MailboxService) -> tuple[int, list[str]]:
        with pytest.raises(ConnectionResetError):
            async with service.delivering():
                await service.take("d-bob")
                raise ConnectionResetError("client went away")
        again = await service.take("d-bob")  # no lease left behind: the mail is there now, not in 30 s
        return (await service.peek("d-bob"))[0], [m.body for m in again.messages]

    assert run(tmp_path, scenario) == (1, ["hello"])  # taken again, and still not delivered


def test_manual_answers_leave_the_lease_to_the_reader(tmp_path: Path) -> None:
    async def scenario(service: MailboxService) -> tuple[int, int, int]:
        async with service.delivering(manual=True) as delivery:
            lease = await service.take("d-bob")
            delivery.written = True
        leased = len((await service.take("d-bob")).messages)  # still under the reader's lease
        assert lease.id is not None
        acked = await service.ack("d-bob", lease.id)
        return leased, acked, (await service.peek("d-bob"))[0]

    assert run(tmp_path, scenario) == (0, 1, 0)


def test_a_take_outside_any_answer_is_left_to_its_lease(tmp_path: Path) -> None:
    async def scenario(service: MailboxService) -> tuple[int, int]:
        lease = await service.take("d-bob")
        return len(lease.messages), len((await service.take("d-bob")).messages)

    assert run(tmp_path, scenario) == (1, 0)  # neither acknowledged nor given back before it expires
