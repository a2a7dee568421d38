"""A small fake Anthropic Messages API for driving the real Claude Code CLI offline.

Usage from synchronous pytest code::

    with FakeAnthropic() as api:
        api.enqueue(tool_use("mcp__plugin_x_mailbox__send", {"to": "bob"}))  # then default "ok"
        run_claude("hi", fake_api_url=api.url, ...)
        assert "Message from" in api.all_text()
        assert api.tool_results()[0]["text"] == "..."

Only ``POST /v1/messages`` requests of the *agent loop* (ones that carry ``tools``) take a
scripted reply from the queue; Claude Code's side requests (title generation, quota probes,
...) and an empty queue get the default reply (text "ok"). Every request to any path is
recorded. Other endpoints (``/v1/messages/count_tokens``, ``/v1/models``, ...) get minimal
valid answers. Binds 127.0.0.1 on an ephemeral port; the server runs in a daemon thread.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeAnthropic", "RecordedRequest", "Reply", "text", "tool_use"]

_SYSTEM_REMINDER = re.compile(r"<system-reminder>(.*?)</system-reminder>", re.S)
_ids = itertools.count(1)


@dataclass(frozen=True)
class Reply:
    """One scripted assistant message: plain text, or a single tool_use block."""

    text: str | None = None
    tool_name: str | None = None
    tool_input: dict[str, Any] | None = None
    tool_id: str | None = None

    def content(self) -> list[dict[str, Any]]:
        if self.tool_name is not None:
            return [
                {
                    "type": "tool_use",
                    "id": self.tool_id or f"toolu_fake{next(_ids):06d}",
                    "name": self.tool_name,
                    "input": dict(self.tool_input or {}),
                }
            ]
        return [{"type": "text", "text": self.text if self.text is not None else "ok"}]

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.tool_name is not None else "end_turn"


def text(s: str) -> Reply:
    """A text reply (ends the turn)."""
    return Reply(text=s)


def tool_use(name: str, input: dict[str, Any] | None = None, *, id: str | None = None) -> Reply:
    """A reply that calls tool ``name`` with ``input``; Claude Code answers with a tool_result."""
    return Reply(tool_name=name, tool_input=input or {}, tool_id=id)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any  # parsed JSON, or None
    time: float = field(default_factory=time.monotonic)
    reply: Reply | None = None  # what /v1/messages answered

    @property
    def is_messages(self) -> bool:
        return self.method == "POST" and self.path.split("?", 1)[0] == "/v1/messages"

    @property
    def is_agent_turn(self) -> bool:
        """A request of the main agent loop (it offers tools), as opposed to a side request."""
        return self.is_messages and isinstance(self.body, dict) and bool(self.body.get("tools"))

    def texts(self) -> list[str]:
        """Every text string in the request: system prompt, messages, tool_result contents."""
        return list(_texts(self.body)) if isinstance(self.body, dict) else []

    def text(self) -> str:
        return "\n".join(self.texts())

    def tool_names(self) -> list[str]:
        if not isinstance(self.body, dict):
            return []
        return [t.get("name", "") for t in self.body.get("tools") or [] if isinstance(t, dict)]


def _content_texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, str):
                yield block
            elif isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    yield block["text"]
                if block.get("type") == "tool_result":
                    yield from _content_texts(block.get("content"))
                elif block.get("type") == "tool_use":
                    yield json.dumps(block.get("input"), sort_keys=True)


def _texts(body: dict[str, Any]) -> Iterator[str]:
    yield from _content_texts(body.get("system"))
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            yield from _content_texts(msg.get("content"))


class FakeAnthropic:
    """Fake Messages API server. Thread-safe; use as a context manager or start()/stop()."""

    def __init__(
        self,
        replies: Iterable[Reply | str] = (),
        *,
        default: Reply | str = "ok",
        consume: Callable[[RecordedRequest], bool] | None = None,
        model: str = "claude-fake-1",
    ) -> None:
        self._lock = threading.Condition()
        self._queue: deque[Reply] = deque(_as_reply(r) for r in replies)
        self.default = _as_reply(default)
        self._consume = consume or (lambda r: r.is_agent_turn)
        self.model = model
        self._requests: list[RecordedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeAnthropic:
        if self._server is not None:
            return self
        handler = type("_Handler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeAnthropic not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Value for ANTHROPIC_BASE_URL."""
        return f"http://127.0.0.1:{self.port}"

    # -- scripting -------------------------------------------------------------------------
    def enqueue(self, *replies: Reply | str) -> None:
        with self._lock:
            self._queue.extend(_as_reply(r) for r in replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _next_reply(self, req: RecordedRequest) -> Reply:
        with self._lock:
            if self._queue and self._consume(req):
                return self._queue.popleft()
            return self.default

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)
            self._lock.notify_all()

    # -- inspection ------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    def mark(self) -> int:
        """A position in the request log: pass it as ``since`` to look only at later requests
        (one FakeAnthropic serving several Claude Code runs in a row)."""
        with self._lock:
            return len(self._requests)

    def messages_requests(self, since: int = 0) -> list[RecordedRequest]:
        return [r for r in self.requests[since:] if r.is_messages]

    def agent_requests(self, since: int = 0) -> list[RecordedRequest]:
        """Main-loop /v1/messages requests (those that offer tools)."""
        return [r for r in self.requests[since:] if r.is_agent_turn]

    def all_text(self) -> str:
        """All text of every /v1/messages request (system prompts, messages, tool results)."""
        return "\n".join(r.text() for r in self.messages_requests())

    def system_reminders(self) -> list[str]:
        """Bodies of every ``<system-reminder>`` block, de-duplicated, in first-seen order.

        asyncRewake Stop-hook stderr arrives in one ("Stop hook blocking error from command
        ..."); hook context does too with older models. See :meth:`injected_context`.
        """
        seen: dict[str, None] = {}
        for r in self.messages_requests():
            for t in r.texts():
                for m in _SYSTEM_REMINDER.findall(t):
                    seen.setdefault(m.strip(), None)
        return list(seen)

    def system_turns(self) -> list[str]:
        """Texts of mid-conversation ``role: "system"`` messages, de-duplicated, first-seen order.

        Claude Code 2.1.330 with its default model (claude-opus-5-5) puts SessionStart stdout
        ("SessionStart:startup hook success: ...") and UserPromptSubmit additionalContext
        ("UserPromptSubmit hook additional context: ...") into such a message, not into a
        ``<system-reminder>``; with older models (e.g. ``--model claude-sonnet-4-5``) the same
        lines arrive as system reminders inside the user message.
        """
        seen: dict[str, None] = {}
        for r in self.messages_requests():
            body = r.body if isinstance(r.body, dict) else {}
            for msg in body.get("messages") or []:
                if isinstance(msg, dict) and msg.get("role") == "system":
                    for t in _content_texts(msg.get("content")):
                        seen.setdefault(t, None)
        return list(seen)

    def injected_context(self) -> str:
        """Everything hooks can inject, whichever way this model/version delivers it:
        system-reminder bodies plus mid-conversation system messages. Assert on this."""
        return "\n".join([*self.system_reminders(), *self.system_turns()])

    def tool_results(self, since: int = 0) -> list[dict[str, Any]]:
        """tool_result blocks seen in agent requests (de-duplicated by tool_use_id).

        Each is the raw block plus ``"text"``: its content flattened to a string.
        """
        out: dict[str, dict[str, Any]] = {}
        for r in self.messages_requests(since):
            body = r.body if isinstance(r.body, dict) else {}
            for msg in body.get("messages") or []:
                content = msg.get("content") if isinstance(msg, dict) else None
                if not isinstance(content, list):
                    continue
                for block in content:
                    if isinstance(block, dict) and block.get("type") == "tool_result":
                        key = str(block.get("tool_use_id"))
                        if key not in out:
                            out[key] = {**block, "text": "\n".join(_content_texts(block.get("content")))}
        return list(out.values())

    def wait_for(self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float = 30.0) -> bool:
        """Block until ``predicate(requests)`` is true or ``timeout`` passes; returns the outcome."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(list(self._requests)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.5))
            return True

    def wait_for_text(self, needle: str, timeout: float = 30.0) -> bool:
        return self.wait_for(lambda reqs: any(needle in r.text() for r in reqs if r.is_messages), timeout)


def _as_reply(r: Reply | str) -> Reply:
    return r if isinstance(r, Reply) else Reply(text=r)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAnthropic  # set on the per-server subclass
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read(self) -> RecordedRequest:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        req = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            raw=raw,
            body=body,
        )
        return req

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_fake{next(_ids):06d}")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        req = self._read()
        self.fake._record(req)
        path = req.path.split("?", 1)[0]
        if path.startswith("/v1/models"):
            model = {
                "type": "model",
                "id": self.fake.model,
                "display_name": "Fake",
                "created_at": "2025-01-01T00:00:00Z",
            }
            if path.rstrip("/") == "/v1/models":
                self._json(200, {"data": [model], "has_more": False, "first_id": model["id"], "last_id": model["id"]})
            else:
                self._json(200, model)
        else:
            self._json(200, {})

    def do_HEAD(self) -> None:
        self.fake._record(self._read())
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        req = self._read()
        path = req.path.split("?", 1)[0]
        if path == "/v1/messages":
            reply = self.fake._next_reply(req)
            req.reply = reply
            self.fake._record(req)
            body = req.body if isinstance(req.body, dict) else {}
            message = self._message(reply, body)
            if body.get("stream"):
                self._stream(message)
            else:
                self._json(200, message)
            return
        self.fake._record(req)
        if path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": max(1, len(req.raw) // 4)})
        else:
            self._json(200, {})

    do_PUT = do_POST
    do_PATCH = do_POST
    do_DELETE = do_POST

    def _message(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"msg_fake{next(_ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model") or self.fake.model,
            "content": reply.content(),
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def _stream(self, message: dict[str, Any]) -> None:
        events: list[tuple[str, dict[str, Any]]] = []
        start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
        events.append(("message_start", {"type": "message_start", "message": start}))
        for i, block in enumerate(message["content"]):
            if block["type"] == "tool_use":
                events.append(
                    (
                        "content_block_start",
                        {"type": "content_block_start", "index": i, "content_block": {**block, "input": {}}},
                    )
                )
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": i,
                            "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])},
                        },
                    )
                )
            else:
                events.append(
                    (
                        "content_block_start",
                        {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}},
                    )
                )
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": i,
                            "delta": {"type": "text_delta", "text": block["text"]},
                        },
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": message["usage"]["output_tokens"]},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        data = b"".join(f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode() for name, obj in events)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_fake{next(_ids):06d}")
        self.end_headers()
        self.wfile.write(data)
