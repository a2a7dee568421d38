"""Just enough HTTP/1.1 over a raw socket to talk to the daemon: one request per connection.

Imports only `_socket` and `claude_mailbox.errors`, so a hook process that uses it starts in about
10 ms; `http.client` would add ~30 ms (it pulls in `email` and `ssl`) to every prompt.
"""

from __future__ import annotations

import _socket

from claude_mailbox.errors import DaemonUnreachable, MailboxError

MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class ConnectionRefused(DaemonUnreachable):
    """Nothing listens at the address: no daemon runs there (a caller need not wait for one)."""


class TimedOut(DaemonUnreachable):
    """Something accepted the connection (or the network dropped it) but no answer came in time."""


def _header_safe(text: str) -> bool:
    """No CR, LF or other control character: a header line must not be able to start another."""
    return text.isprintable() or all(ch == "\t" or ch.isprintable() for ch in text)


class Endpoint:
    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`http://127.0.0.1:37849` (a trailing slash or path is ignored) -> host and port."""
        rest = url.strip()
        if not rest.startswith("http://"):
            raise MailboxError(f"unsupported daemon URL {url!r}: expected http://HOST:PORT")
        authority = rest[len("http://") :].split("/", 1)[0]
        if authority.startswith("["):
            host, _, port_part = authority[1:].partition("]")
            port_text = port_part.lstrip(":")
        else:
            host, _, port_text = authority.partition(":")
        try:
            port = int(port_text) if port_text else 80
        except ValueError:
            raise MailboxError(f"invalid port in daemon URL {url!r}") from None
        if not host or not 0 < port < 65536:
            raise MailboxError(f"invalid daemon URL {url!r}")
        return cls(host, port)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def http_request(
    url: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
) -> Response:
    """One HTTP exchange. Raises ConnectionRefused or TimedOut (both DaemonUnreachable) when
    nothing answers, MailboxError for a header or path that could smuggle a second line."""
    endpoint = Endpoint.parse(url)
    if not path.startswith("/") or not _header_safe(path) or " " in path:
        raise MailboxError(f"refusing to request {path!r}: the path must be quoted")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.host_header}", "Connection: close"]
    for name, value in (headers or {}).items():
        if not name or not name.isascii() or not _header_safe(name) or ":" in name or " " in name:
            raise MailboxError(f"refusing to send the header name {name!r}")
        if not _header_safe(value):
            raise MailboxError(f"refusing to send a control character in the {name} header")
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b"")
    try:
        family = _socket.AF_INET6 if ":" in endpoint.host else _socket.AF_INET
        if endpoint.host == "localhost":
            endpoint = Endpoint("127.0.0.1", endpoint.port)
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((endpoint.host, endpoint.port))
            sock.sendall(request)
            raw = _read_all(sock)
        finally:
            sock.close()
    except ConnectionRefusedError:
        raise ConnectionRefused(f"the mailbox daemon at {url} is not answering (connection refused)") from None
    except TimeoutError:
        raise TimedOut(f"the mailbox daemon at {url} is not answering (timed out)") from None
    except OSError as exc:  # reset, no route, response too large
        raise DaemonUnreachable(f"the mailbox daemon at {url} is not answering ({_reason(exc)})") from None
    return _parse_response(raw, url)


def _read_all(sock: _socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise OSError("response too large")


def _parse_response(raw: bytes, url: str) -> Response:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise DaemonUnreachable(f"the mailbox daemon at {url} closed the connection without an answer")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise DaemonUnreachable(f"{url} did not answer with HTTP") from None
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Response(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
