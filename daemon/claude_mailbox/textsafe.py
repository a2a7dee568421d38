"""Text that another process controls (message bodies, names, cwd, project dirs), made safe to put
into a model's context or onto a terminal. Stdlib only: the CLI and the daemon share it.

Two forms:
- `quote(text)`: a JSON string literal (the form message bodies already take in hook contexts),
  with every character that could break a line, reorder text or hide itself escaped as `\\uXXXX`;
- `clean(text)`: the same escaping without the quotes, for a field inside a line (a project path).

Escaped: C0 and C1 controls (ESC, CR, LF, NEL, ...), DEL, U+2028/U+2029 (line and paragraph
separators), bidi controls (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069), zero-width and
invisible characters (U+200B-U+200D, U+2060-U+2064, U+180E), the BOM (U+FEFF) and lone surrogates.
"""

from __future__ import annotations

import json
import re

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def clean(text: str) -> str:
    """`text` with every unsafe character written as \\uXXXX (and backslashes left as they are)."""
    return _UNSAFE.sub(_escape, text)


def quote(text: str) -> str:
    """`text` as a JSON string literal whose unsafe characters are all \\u-escaped."""
    return _UNSAFE.sub(_escape, json.dumps(text, ensure_ascii=False))


# json.dumps escapes C0 controls inside strings itself; a C0 character left in its output is
# layout (the newlines and spaces of `indent`), so this pattern leaves C0 alone.
_UNSAFE_AFTER_JSON = re.compile(_UNSAFE.pattern.replace("\x00-\x1f", "", 1))


def dumps(data: object, indent: int | None = None) -> str:
    """json.dumps for output read by people and tools: non-ASCII stays readable, but every unsafe
    character inside strings is \\u-escaped (json.dumps alone leaves U+2028, bidi controls, ...)."""
    return _UNSAFE_AFTER_JSON.sub(_escape, json.dumps(data, ensure_ascii=False, indent=indent))
