"""model.py and the cost units the stores budget with in SQL: each overhead must match the text it
measures (hooktext.render_message, Message.to_json), or a hook's context or a JSON page overflows."""

from __future__ import annotations

import json

from claude_mailbox.hooktext import RENDERED_OVERHEAD, URGENT_RENDERED_COST, render_message
from claude_mailbox.model import ISO_LENGTH, JSON_OVERHEAD, URGENT_JSON_COST, Message, now_iso


def variable_part(message: Message, urgent_cost: int = 0) -> int:
    """What the SQL cost adds per message: the `quoted` column, length(sender), length(id), and the
    urgent mark's cost times the urgent flag."""
    return len(json.dumps(message.body)) + len(message.sender) + len(str(message.id)) + urgent_cost * message.urgent


SAMPLES = [
    Message(7, "alice", "bob", "hello", now_iso()),
    Message(123456789, "claude-1a2b3c4d", "bob", 'a "quoted"\nline \u00e9 \U0001f600', now_iso(), attempts=1),
    Message(42, "s", "r", "x" * 300, now_iso(), attempts=3),
    Message(43, "boss", "r", "stop", now_iso(), attempts=2, urgent=True),
]


def test_now_iso_has_the_fixed_width_the_costs_assume() -> None:
    assert len(now_iso()) == ISO_LENGTH


def test_the_rendered_overhead_is_exactly_one_hook_line() -> None:
    for message in SAMPLES:
        assert len(render_message(message)) + 1 == variable_part(message, URGENT_RENDERED_COST) + RENDERED_OVERHEAD


def test_the_json_overhead_covers_one_message_in_an_answer() -> None:
    """The real overhead (keys, createdAt, the delivery fields, the ", " between list items) never
    exceeds JSON_OVERHEAD, even with a long attempts count, and is not far below it."""
    for message in [*SAMPLES, Message(9, "a", "b", "c", now_iso(), attempts=10**9, urgent=True)]:
        size = len(json.dumps(message.to_json())) + len(", ")
        assert size <= variable_part(message, URGENT_JSON_COST) + JSON_OVERHEAD
    redelivered = Message(1, "a", "b", "c", now_iso(), attempts=2)
    real = len(json.dumps(redelivered.to_json())) + len(", ") - variable_part(redelivered)
    assert JSON_OVERHEAD - 16 <= real <= JSON_OVERHEAD
