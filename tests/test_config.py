"""Settings in-process: defaults < config file (TOML, or the seed's mailbox.json) < flags, errors
that name the file and line, and the durability setting reaching the daemon's own connection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from claude_mailbox import config, paths
from claude_mailbox.config import Config
from claude_mailbox.errors import ConfigError
from claude_mailbox.service import MailboxService


def test_defaults(mailbox_home: Path) -> None:
    settings = config.load()
    assert settings == Config()
    assert settings.source is None
    assert (settings.port, settings.bind) == (37849, "127.0.0.1")
    assert settings.database == mailbox_home / "mailbox.db"
    assert settings.durability == "normal"
    assert settings.max_body_bytes == 64 * 1024
    assert settings.url == "http://127.0.0.1:37849"


def test_claude_mailbox_home_moves_every_path(mailbox_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert paths.data_dir() == mailbox_home
    assert paths.config_path() == mailbox_home / "config.toml"
    assert paths.legacy_config_path() == mailbox_home / "mailbox.json"
    assert paths.default_db_path() == mailbox_home / "mailbox.db"
    assert paths.url_file().parent == mailbox_home
    monkeypatch.delenv("CLAUDE_MAILBOX_HOME")
    monkeypatch.setenv("HOME", str(mailbox_home / "user"))
    assert paths.data_dir() == mailbox_home / "user" / ".claude-mailbox"


def test_config_toml_overrides_defaults(mailbox_home: Path, tmp_path: Path) -> None:
    (mailbox_home / "config.toml").write_text(
        f'port = 4000\ndb_path = "{tmp_path / "x.db"}"\ndurability = "full"\nmax_body_bytes = 1000\n'
        'prefix = "backend"\nretention_days = 30\n',
        encoding="utf-8",
    )
    settings = config.load()
    assert settings.port == 4000
    assert settings.database == tmp_path / "x.db"
    assert settings.durability == "full"
    assert settings.max_body_bytes == 1000
    assert settings.prefix == "backend"
    assert settings.retention_days == 30
    assert settings.source == str(mailbox_home / "config.toml")
    assert settings.bind == "127.0.0.1"  # not in the file: the default


def test_db_path_expands_the_home_directory(mailbox_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(mailbox_home / "h"))
    (mailbox_home / "config.toml").write_text('db_path = "~/mail.db"\n', encoding="utf-8")
    assert config.load().database == mailbox_home / "h" / "mail.db"


def test_flags_beat_the_file_and_none_means_not_given(mailbox_home: Path, tmp_path: Path) -> None:
    (mailbox_home / "config.toml").write_text('port = 4000\nbind = "localhost"\n', encoding="utf-8")
    from_file = config.load()
    merged = config.with_overrides(from_file, port=5000, bind=None, db_path=tmp_path / "flag.db")
    assert (merged.port, merged.bind, merged.database) == (5000, "localhost", tmp_path / "flag.db")
    unchanged = config.with_overrides(from_file, port=None, bind=None, db_path=None)
    assert unchanged == from_file


def test_flag_values_are_validated(mailbox_home: Path) -> None:
    with pytest.raises(ConfigError, match="port must be between 0 and 65535"):
        config.with_overrides(config.load(), port=70000)


def test_legacy_mailbox_json(mailbox_home: Path, tmp_path: Path) -> None:
    legacy = mailbox_home / "mailbox.json"
    legacy.write_text(
        json.dumps({"port": 4100, "bind": "127.0.0.1", "dbPath": str(tmp_path / "seed.db"), "someSeedKey": 1}),
        encoding="utf-8",
    )
    settings = config.load()
    assert (settings.port, settings.database, settings.source) == (4100, tmp_path / "seed.db", str(legacy))


def test_config_toml_wins_over_mailbox_json(mailbox_home: Path) -> None:
    (mailbox_home / "mailbox.json").write_text(json.dumps({"port": 4100}), encoding="utf-8")
    (mailbox_home / "config.toml").write_text("port = 4200\n", encoding="utf-8")
    assert config.load().port == 4200


def test_explicit_path_is_the_only_file_read(mailbox_home: Path, tmp_path: Path) -> None:
    (mailbox_home / "config.toml").write_text("port = 4200\n", encoding="utf-8")
    explicit = tmp_path / "other.toml"
    explicit.write_text("max_body_bytes = 5\n", encoding="utf-8")
    settings = config.load(explicit)
    assert (settings.port, settings.max_body_bytes) == (37849, 5)
    legacy_style = tmp_path / "old.json"
    legacy_style.write_text(json.dumps({"port": 4300}), encoding="utf-8")
    assert config.load(legacy_style).port == 4300
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("file_name", "text", "line"),
    [
        ("config.toml", 'port = 1\nbind = "unterminated\n', 2),
        ("config.toml", "\n\n\n[table\n", 4),
        ("config.toml", "port = 1\nport = 2\n", 2),
        ("mailbox.json", '{"port": 1,\n"bind": }', 2),
    ],
)
def test_malformed_file_names_file_and_line(mailbox_home: Path, file_name: str, text: str, line: int) -> None:
    path = mailbox_home / file_name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config.load()
    assert str(path) in caught.value.message
    assert f"line {line}" in caught.value.message


def test_not_utf8_is_a_clear_error(mailbox_home: Path) -> None:
    path = mailbox_home / "config.toml"
    path.write_bytes(b"port = 1\n# \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        config.load()
    assert str(path) in caught.value.message


def test_mailbox_json_must_be_an_object(mailbox_home: Path) -> None:
    (mailbox_home / "mailbox.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="JSON object"):
        config.load()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("colour = 'blue'\n", ["unknown setting 'colour'", "port"]),
        ("source = 'x'\n", ["unknown setting 'source'"]),
        ('port = "37849"\n', ["port", "whole number"]),
        ("port = true\n", ["port", "whole number"]),
        ("port = 1.5\n", ["port", "whole number"]),
        ("port = -1\n", ["port", "between 0 and 65535"]),
        ("bind = 127\n", ["bind", "string"]),
        ('durability = "paranoid"\n', ["durability", "normal, full"]),
        ("max_body_bytes = 0\n", ["max_body_bytes", "positive"]),
        ("rate_limit_per_minute = -5\n", ["rate_limit_per_minute", "positive"]),
        ("retention_days = 0\n", ["retention_days", "positive"]),
        ('db_path = ""\n', ["db_path", "file path"]),
        ("db_path = 5\n", ["db_path", "file path"]),
    ],
)
def test_invalid_settings_name_the_file_and_the_key(mailbox_home: Path, text: str, words: list[str]) -> None:
    path = mailbox_home / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config.load()
    assert str(path) in caught.value.message
    for word in words:
        assert word in caught.value.message, caught.value.message


def test_write_setting_round_trip(mailbox_home: Path) -> None:
    (mailbox_home / "config.toml").write_text('# mine\nprefix = "backend"\n', encoding="utf-8")
    assert config.write_setting("port", 4500) == mailbox_home / "config.toml"
    settings = config.load()
    assert (settings.port, settings.prefix) == (4500, "backend")
    config.write_setting("port", None)
    assert config.load().port == 37849
    assert config.load().prefix == "backend"


def _synchronous_of_daemon_connection(settings: Config) -> int:
    """Open the service exactly as serve does and read PRAGMA synchronous on its own connection."""

    async def main() -> int:
        service = MailboxService(settings)
        await service.open()
        try:
            return int(await service.db(lambda store: store.db.execute("PRAGMA synchronous").fetchall()[0][0]))
        finally:
            await service.close()

    return asyncio.run(main())


@pytest.mark.parametrize(("durability", "expected"), [(None, 1), ("normal", 1), ("full", 2)])
def test_durability_reaches_the_daemon_connection(mailbox_home: Path, durability: str | None, expected: int) -> None:
    if durability is not None:
        (mailbox_home / "config.toml").write_text(f'durability = "{durability}"\n', encoding="utf-8")
    settings = config.load()
    assert _synchronous_of_daemon_connection(settings) == expected  # 1 = NORMAL, 2 = FULL
    assert (mailbox_home / "mailbox.db").is_file()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("busy_timeout_ms = 2147483648\n", ["busy_timeout_ms", "between 1 and 60000", "2147483648"]),
        ("retention_days = 1000000\n", ["retention_days", "between 1 and 36500"]),
        ("client_timeout_seconds = 99999999\n", ["client_timeout_seconds", "between 1 and 3600"]),
        ("max_body_bytes = 99999999999\n", ["max_body_bytes", "between 1 and"]),
        ("max_request_bytes = 10\n", ["max_request_bytes", "between 1024 and"]),
        ("lease_seconds = 0\n", ["lease_seconds", "between 1 and 86400"]),
        ("database_connect_timeout_seconds = 0\n", ["database_connect_timeout_seconds", "between 1 and 3600"]),
        ("max_body_bytes = 5000\nmax_request_bytes = 4096\n", ["max_body_bytes", "must not exceed max_request_bytes"]),
    ],
)
def test_every_number_has_a_range_checked_at_load(mailbox_home: Path, text: str, words: list[str]) -> None:
    path = mailbox_home / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config.load()
    message = caught.value.message
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message


def test_every_whole_number_setting_has_a_range() -> None:
    assert set(config.RANGES) == config._INT_KEYS


def test_db_path_under_a_regular_file_is_named(mailbox_home: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("x", encoding="utf-8")
    path = mailbox_home / "config.toml"
    path.write_text(f'db_path = "{blocker / "sub" / "mailbox.db"}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config.load()
    assert f"{blocker} is a file, not a directory" in caught.value.message
    assert "Errno" not in caught.value.message
    path.write_text(f'db_path = "{tmp_path}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="is a directory"):
        config.load()


def test_write_setting_leaves_no_temporary_file(mailbox_home: Path) -> None:
    config.write_setting("retention_days", 30)
    assert config.load().retention_days == 30
    assert sorted(p.name for p in mailbox_home.iterdir() if p.name.endswith(".tmp")) == []


def test_a_failing_scheduled_job_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    from claude_mailbox import server

    runs: list[int] = []

    async def prune() -> None:
        runs.append(1)
        raise OSError(28, "No space left on device")

    async def run() -> None:
        task = asyncio.create_task(server._every(0.01, prune, first=0.0))
        while len(runs) < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    with caplog.at_level("ERROR", logger="claude_mailbox"):
        asyncio.run(run())
    assert len(runs) >= 3  # the job kept its schedule after failing
    assert "scheduled job failed" in caplog.text and "No space left on device" in caplog.text


# --- database URLs (issue 25): one redaction for every place that shows one, refused when malformed ----

SECRET = "S3cr%3Dt"  # percent-encoded as a user would write it: S3cr=t
SECRETS = ("S3cr", "=t", "S3cr=t")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://mbx:SECRET@db:5432/mail", "postgresql://mbx@db:5432/mail"),
        ("postgresql://:SECRET@db/mail", "postgresql://db/mail"),
        ("postgresql://mbx:p@SECRET@db/mail", "postgresql://mbx@db/mail"),  # an unescaped @ in the password
        ("postgresql://db:5432/mail?user=mbx&password=SECRET", "postgresql://db:5432/mail?user=mbx"),
        ("postgresql://db/mail?password=SECRET&sslmode=require", "postgresql://db/mail?sslmode=require"),
        ("postgresql://db/mail?passfile=/home/u/SECRET", "postgresql://db/mail"),
        ("postgresql://db/mail?sslpassword=SECRET&sslkey=/k/SECRET.key", "postgresql://db/mail"),
        ("postgresql://db/mail?sslcert=/c/SECRET.crt&application_name=x", "postgresql://db/mail?application_name=x"),
        ("postgresql://db/mail?pass%77ord=SECRET", "postgresql://db/mail"),  # libpq decodes %XX in keys
        ("postgresql://db/mail?PASSWORD=SECRET", "postgresql://db/mail"),
        ("postgresql://db/mail?my_api_token=SECRET", "postgresql://db/mail"),  # a key naming a secret
        ("postgresql://u:SECRET@h1:5432,h2:5433/mail?password=SECRET", "postgresql://u@h1:5432,h2:5433/mail"),
        ("postgres://u:SECRET@[::1]:5432/mail#SECRET", "postgres://u@[::1]:5432/mail"),
        ("postgresql:///mail?host=/run/postgresql&password=SECRET", "postgresql:///mail?host=/run/postgresql"),
        ("postgresql://u:SECRET@[::1/mail?password=SECRET", "postgresql://u@[::1/mail"),  # malformed: still redacted
    ],
)
def test_every_form_of_a_database_url_loses_its_secrets(mailbox_home: Path, url: str, shown: str) -> None:
    url = url.replace("SECRET", SECRET)
    assert config.redact_url(url) == shown
    assert Config(database_url=url).database_label == shown
    for secret in SECRETS:
        assert secret not in shown
    # A driver's message quoting the URL loses them too.
    said = config.scrub(f"could not connect with {url}", url)
    assert "S3cr" not in said and "***" in said


def test_a_drivers_message_loses_the_decoded_secret_too() -> None:
    url = f"postgresql://db/mail?user=mbx&password={SECRET}"
    said = config.scrub("password authentication failed: 'S3cr=t' is not the password of mbx", url)
    assert said == "password authentication failed: '***' is not the password of mbx"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://mbx@127.0.0.1:notaport/mail", ["port 'notaport'", "1 to 65535"]),
        ("postgresql://mbx@127.0.0.1:99999/mail", ["port '99999'", "1 to 65535"]),
        ("postgresql://mbx@[::1/mail", ["malformed host", "closing ]"]),
        ("postgresql://mbx@h1:5432,h2:x/mail", ["port 'x'", "'h2'"]),
        ("postgresql://mbx@db/mail?port=0", ["port '0' in its query"]),
        ("postgresql://mbx@::1/mail", ["malformed host", "in brackets"]),
        ("mysql://mbx@db/mail", ["database_url must be a postgresql://"]),
    ],
)
def test_a_malformed_database_url_is_one_line_naming_the_part(mailbox_home: Path, url: str, words: list[str]) -> None:
    path = mailbox_home / "config.toml"
    path.write_text(f"database_url = {json.dumps(url.replace('mbx@', f'mbx:{SECRET}@'))}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config.load()
    message = caught.value.message
    assert "\n" not in message and str(path) in message
    assert "S3cr" not in message
    for word in words:
        assert word in message, message
    with pytest.raises(ConfigError) as flag:  # `serve --database-url` is checked the same way
        config.with_overrides(Config(), database_url=url)
    assert words[0] in flag.value.message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://mbx@db:5432/mail",
        "postgresql://mbx@[::1]:5432/mail",
        "postgresql://mbx@h1:5432,h2:5433/mail",
        "postgresql:///mail?host=/run/postgresql",
        "postgres://db/mail?port=5432&sslmode=require",
    ],
)
def test_well_formed_database_urls_load(mailbox_home: Path, url: str) -> None:
    (mailbox_home / "config.toml").write_text(f"database_url = {json.dumps(url)}\n", encoding="utf-8")
    assert config.load().database_url == url
