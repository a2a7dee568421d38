"""Just enough HTTP/1.1 over a raw socket to talk to the daemon: one request per connection.

Imports only `_socket`, `claude_mailbox.errors` and `claude_mailbox.locate` (the URL's Endpoint), so
a hook process that uses it starts in about 10 ms; `http.client` would add ~30 ms (it pulls in `email`
and `ssl`) to every prompt. An https:// URL (a remote daemon, issue 13.2) imports `ssl` for that
request only, and verifies the daemon's certificate against the system CAs plus $CLAUDE_MAILBOX_CA
(or `tls_ca` in config.toml).
"""

from __future__ import annotations

import _socket
import os

from claude_mailbox import auth
from claude_mailbox.errors import DaemonUnreachable, MailboxError
from claude_mailbox.locate import CONFIG_FILE, Endpoint, data_dir

TYPE_CHECKING = False  # not `typing`: importing it costs a hook ~5 ms (mypy knows this name)
if TYPE_CHECKING:
    import ssl

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
CA_ENV = "CLAUDE_MAILBOX_CA"
_tls_context: ssl.SSLContext | None = None  # built once per process, on the first https request


class ConnectionRefused(DaemonUnreachable):
    """Nothing listens at the address: no daemon runs there (a caller need not wait for one)."""


class TimedOut(DaemonUnreachable):
    """Something accepted the connection (or the network dropped it) but no answer came in time."""


class TlsFailed(DaemonUnreachable):
    """Something listens there, but the TLS handshake failed (most often a certificate that does not
    verify): a daemon is running, so none must be started, and the fix is trust, not a start."""


def _header_safe(text: str) -> bool:
    """No CR, LF or other control character: a header line must not be able to start another."""
    return text.isprintable() or all(ch == "\t" or ch.isprintable() for ch in text)


class NotOurDaemon(DaemonUnreachable):
    """Something answers at the address but cannot prove it holds the token: most likely another
    program (or another user) holds the port while this user's daemon is stopped. Nothing secret was
    sent to it."""


def _header_line_bytes(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _bearer(headers: dict[str, str] | None) -> str | None:
    value = (headers or {}).get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme != "Bearer":
        return None
    return token.strip() or None


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
    prove: str | None = None,
) -> Response:
    """One HTTP exchange. Raises ConnectionRefused or TimedOut (both DaemonUnreachable) when
    nothing answers, MailboxError for a header or path that could smuggle a second line.

    A request that carries a Bearer token, or names one in `prove`, first asks the listener to prove
    it holds that token (auth.proof) on the same connection, and sends nothing more to one that cannot
    unless its socket is this uid's (NotOurDaemon). A request to /health carries the challenge itself."""
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
    token = prove or _bearer(headers)
    nonce = auth.new_nonce() if token else ""
    challenge = b""
    if token and path == "/health" and method == "GET" and not _bearer(headers):  # a probe carrying no token
        lines.append(f"{auth.CHALLENGE_HEADER}: {nonce}")
    elif token:  # a keep-alive /health first: the same connection then carries the token
        challenge = _header_line_bytes(
            ["GET /health HTTP/1.1", f"Host: {endpoint.host_header}", f"{auth.CHALLENGE_HEADER}: {nonce}"]
        )
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    request = _header_line_bytes(lines) + (body or b"")
    try:
        family = _socket.AF_INET6 if endpoint.ipv6 else _socket.AF_INET
        sock: _socket.socket = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((endpoint.connect_host, endpoint.port))
            if endpoint.tls:
                sock = _handshake(sock, endpoint.host, url)  # the name the certificate must carry
            leftover = b""
            if challenge:
                sock.sendall(challenge)
                answer, leftover = _read_one(sock, url)
                _check_proof(answer, token or "", nonce, url, sock)
            sock.sendall(request)
            raw = leftover + _read_all(sock)
            response = _parse_response(raw, url)
            if token and not challenge:
                _check_proof(response, token, nonce, url, sock)
        finally:
            sock.close()
    except ConnectionRefusedError:
        raise ConnectionRefused(f"the mailbox daemon at {url} is not answering (connection refused)") from None
    except TimeoutError:
        raise TimedOut(f"the mailbox daemon at {url} is not answering (timed out)") from None
    except OSError as exc:  # reset, no route, response too large, a certificate that does not verify
        raise DaemonUnreachable(f"the mailbox daemon at {url} is not answering ({_reason(exc)})") from None
    return response


def _check_proof(response: Response, token: str, nonce: str, url: str, sock: _socket.socket) -> None:
    """Is the listener this user's? It proved it holds the token, or (where the owner can be read)
    its socket is this uid's: the same user can read the token file anyway, the threat is another
    user. That also lets the hooks of a newer plugin reach a running 0.2.1 daemon, which answers no
    challenge, and update it (SessionStart's version sync)."""
    if auth.proven(token, nonce, response.headers.get(auth.PROOF_HEADER.lower())):
        return
    if not _same_user(sock):
        raise NotOurDaemon(
            f"the program listening at {url} is not this user's mailbox daemon (it cannot prove it holds the token "
            f"this client has: ${auth.TOKEN_ENV}, else the data dir's token file), so nothing was sent to it: "
            "another program, run by another user, holds the port"
        )


def _same_user(sock: _socket.socket) -> bool:
    """Is the server's end of this connection owned by this uid? False where that cannot be read
    (not Linux, a remote daemon): there only the proof counts. Rare (a failed proof): may import more."""
    try:
        from claude_mailbox.sockowner import connection_uid

        return connection_uid(sock.getsockname(), sock.getpeername()) == os.getuid()
    except Exception:  # no os.getuid (Windows), an unreadable table: unknown
        return False


def _read_one(sock: _socket.socket, url: str) -> tuple[Response, bytes]:
    """One response with a Content-Length from a kept-alive connection, and any bytes after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > 65536:
            raise NotOurDaemon(f"the program listening at {url} did not answer as a mailbox daemon does")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    response = _parse_response(head + b"\r\n\r\n", url)
    try:
        length = int(response.headers.get("content-length", ""))
    except ValueError:
        raise NotOurDaemon(f"the program listening at {url} did not answer as a mailbox daemon does") from None
    while len(rest) < length:
        if length > 65536 or not (chunk := sock.recv(65536)):
            raise NotOurDaemon(f"the program listening at {url} did not answer as a mailbox daemon does")
        rest += chunk
    response.body = rest[:length]
    return response, rest[length:]


def _handshake(sock: _socket.socket, server_name: str, url: str) -> ssl.SSLSocket:
    import ssl

    try:
        return _tls().wrap_socket(sock, server_hostname=server_name)  # type: ignore[arg-type]
    except ssl.SSLError as exc:  # not a timeout or a reset: the peer spoke, and TLS said no
        raise TlsFailed(f"refusing the mailbox daemon at {url}: {_reason(exc)}") from None


def _tls() -> ssl.SSLContext:
    """Verify the daemon against the system CAs plus the CA file of $CLAUDE_MAILBOX_CA, else of
    `tls_ca` in config.toml (a self-signed certificate is its own CA file)."""
    global _tls_context
    if _tls_context is None:
        import ssl

        context = ssl.create_default_context()
        ca_file = os.environ.get(CA_ENV) or _configured_ca()
        if ca_file:
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise MailboxError(f"cannot read the CA file {ca_file}: {_reason(exc)}") from None
        _tls_context = context
    return _tls_context


def _configured_ca() -> str | None:
    """`tls_ca` from config.toml, else its `tls_cert` (the daemon's own machine: a self-signed
    certificate is its own CA), read without the config module (only https requests pay for it)."""
    path = os.path.join(data_dir(), CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    import tomllib

    try:
        with open(path, "rb") as handle:
            settings = tomllib.load(handle)
        value = settings.get("tls_ca") or settings.get("tls_cert")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return os.path.expanduser(value) if isinstance(value, str) and value else None


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
    verify = getattr(exc, "verify_message", None)  # ssl.SSLCertVerificationError
    if verify:
        return f"TLS: certificate verify failed: {verify}; trust its CA with ${CA_ENV} or tls_ca in config.toml"
    reason = getattr(exc, "reason", None)  # other ssl errors
    return (f"TLS: {reason}" if reason else None) or exc.strerror or str(exc) or type(exc).__name__
