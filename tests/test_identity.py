"""Session id -> mailbox name: deterministic, always a valid name, tolerant of odd ids."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from claude_mailbox import identity
from claude_mailbox.errors import InvalidInput

SID = "a15069b7-da2c-43f4-97ea-7a81214b175a"  # a real 2.1.330 session id (cc-findings b.)


def test_uuid_gives_first_eight_hex_digits() -> None:
    assert identity.session_mailbox(SID) == "claude-a15069b7"


def test_uppercase_and_missing_dashes_give_the_same_name() -> None:
    assert identity.session_mailbox(SID.upper()) == "claude-a15069b7"
    assert identity.session_mailbox(SID.replace("-", "")) == "claude-a15069b7"
    assert identity.session_mailbox("{" + SID.upper() + "}") == "claude-a15069b7"


def test_dash_inside_the_first_eight_hex_digits_is_skipped() -> None:
    assert identity.session_suffix("ab-cd-ef-12-34") == "abcdef12"


def test_short_ids_are_hashed_not_padded() -> None:
    name = identity.session_mailbox("abc")
    assert name == "claude-" + hashlib.sha256(b"abc").hexdigest()[:8]
    assert identity.session_mailbox("abc") != identity.session_mailbox("abd")


def test_non_hex_ids_still_get_eight_hex_digits() -> None:
    for odd in ("session-zzz", "ünïcödé", "x" * 500, "🙂", "g" * 8, "  spaced id  "):
        suffix = identity.session_suffix(odd)
        assert len(suffix) == 8
        assert set(suffix) <= set("0123456789abcdef")
        assert identity.validate_name(identity.session_mailbox(odd)) == identity.session_mailbox(odd)


def test_lone_surrogate_does_not_crash() -> None:
    assert len(identity.session_suffix("\udcff")) == 8


def test_deterministic_across_calls_and_random_uuids() -> None:
    for _ in range(200):
        sid = str(uuid.uuid4())
        first = identity.session_mailbox(sid, "backend")
        assert first == identity.session_mailbox(sid, "backend")
        assert first == f"backend-{sid[:8]}"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (None, "claude"),
        ("", "claude"),
        ("   ", "claude"),
        ("backend", "backend"),
        ("My App", "My-App"),
        ("a/b\\c:d", "a-b-c-d"),
        ("--.weird.--", "weird"),
        ("ünï", "n"),
        ("ü", "claude"),
        ("front end!!", "front-end"),
    ],
)
def test_prefix_cleaning(prefix: str | None, expected: str) -> None:
    assert identity.clean_prefix(prefix) == expected
    assert identity.session_mailbox(SID, prefix) == f"{expected}-a15069b7"


def test_name_never_exceeds_64_characters() -> None:
    name = identity.session_mailbox(SID, "p" * 300)
    assert len(name) == identity.NAME_MAX
    assert name.endswith("-a15069b7")
    assert identity.validate_name(name) == name


def test_every_derived_name_is_valid() -> None:
    for prefix in (None, "x" * 64, "a b", "...", "-", "_ok_"):
        for sid in (SID, "1", "", "Z" * 100):
            assert identity.validate_name(identity.session_mailbox(sid, prefix))


@pytest.mark.parametrize("bad", ["", "has space", "a" * 65, "ünï", "new\nline", None, 7])
def test_validate_name_rejects(bad: object) -> None:
    with pytest.raises(InvalidInput):
        identity.validate_name(bad)


def test_the_name_rule_is_written_once() -> None:
    """Issue 19.5: validate_name, the JSON Schemas and the OpenAPI document share identity.py's rule."""
    import re

    from claude_mailbox import openapi, schemas

    assert schemas.NAME_RE is identity.NAME_REGEX
    assert openapi.NAME["pattern"] is identity.NAME_REGEX and openapi.NAME["maxLength"] == identity.NAME_MAX
    for name in ("a", "A.b_c-9", "x" * 64):
        assert identity.validate_name(name) == name and re.fullmatch(identity.NAME_REGEX, name)
    for bad in ("", "x" * 65, "a b", "bob\n", "é"):
        with pytest.raises(InvalidInput):
            identity.validate_name(bad)
        # The schema's pattern refuses it too (ECMA-262 "$" is the end of the text; Python's also
        # matches before a final newline, hence fullmatch in validate_name).
        assert re.fullmatch(identity.NAME_REGEX, bad) is None
