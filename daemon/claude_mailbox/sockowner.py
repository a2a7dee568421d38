"""Who owns the far end of a TCP connection on this machine, from /proc/net/tcp{,6} (Linux). The
client side of issue 20.1's rule: a listener of this same uid is this user's. Stdlib only, no other
claude_mailbox module: httpclient imports it on a failed proof.
"""

from __future__ import annotations


def connection_uid(local: tuple[object, ...], peer: tuple[object, ...]) -> int | None:
    """The owner uid of the server's end of the connection from `local` to `peer` (a client socket's
    getsockname() and getpeername()), from /proc/net/tcp{,6}: an accepted socket carries the uid of
    the process whose listener accepted it. None where unknown (not Linux, a remote peer)."""
    import _socket
    import sys

    def word(packed: bytes) -> str:  # the kernel prints each 32-bit word in host byte order
        return "".join(f"{int.from_bytes(packed[i : i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4))

    def rows(host: object, port: object) -> tuple[str, str]:
        text, number = str(host).split("%", 1)[0], int(str(port))
        if ":" in text:
            return "", f"{word(_socket.inet_pton(_socket.AF_INET6, text))}:{number:04X}"
        v4 = _socket.inet_pton(_socket.AF_INET, text)
        mapped = bytes(10) + b"\xff\xff" + v4  # ::ffff:a.b.c.d, as a dual-stack listener sees it
        return f"{word(v4)}:{number:04X}", f"{word(mapped)}:{number:04X}"

    try:
        server4, server6 = rows(*peer[:2])
        client4, client6 = rows(*local[:2])
    except (OSError, ValueError, TypeError):
        return None
    for table, server, client in (("/proc/net/tcp", server4, client4), ("/proc/net/tcp6", server6, client6)):
        if not server:
            continue
        try:
            with open(table, encoding="ascii") as handle:
                for line in handle:
                    fields = line.split()
                    if len(fields) > 7 and fields[1] == server and fields[2] == client:
                        return int(fields[7])
        except (OSError, ValueError):
            continue
    return None
