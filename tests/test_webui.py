"""The web page at `/` in a real headless Chromium (the distribution's chromium + chromedriver, driven
by Selenium) against the real daemon: it lists mailboxes, shows new mail live, sends notes from
"human" that the recipient's `check` returns, and a page from another origin cannot write."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_mailbox import auth
from harness import Daemon, free_port, run_cli

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
SHOWN_WITHIN = 1.0  # seconds from send to the message on the page (issue 14)

webdriver = pytest.importorskip("selenium.webdriver")
if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip("chromium and chromium-driver are not installed (scripts/check installs them)", allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def make_browser(profile: Path, width: int = 1100, height: int = 700, dark: bool = False) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    if dark:
        driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
        )
    return driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = make_browser(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def login_link(daemon: Daemon) -> str:
    token = auth.read_token(str(daemon.home))
    return f"{daemon.url}/#token={token}" if token else f"{daemon.url}/"


def feed_waiters(daemon: Daemon, count: int = 1) -> None:
    """The page is live once its feed long-poll waits in the daemon (/health counts waiters)."""
    deadline = time.monotonic() + 15
    while daemon.client().health(detailed=True)["waiters"] < count:
        assert time.monotonic() < deadline, "the page never started its long-poll"
        time.sleep(0.02)


def texts(driver: Any, selector: str) -> list[str]:
    """Read in one script run: the page re-renders its lists on every update."""
    script = "return Array.from(document.querySelectorAll(arguments[0]), (e) => e.textContent)"
    return list(driver.execute_script(script, selector))


def retrying(driver: Any, action: Callable[[Any], object]) -> None:
    """A user's click or choice, repeated if the page re-rendered the element just then."""
    WebDriverWait(driver, 5, ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: action(d) or True)


def open_page(driver: Any, daemon: Daemon) -> None:
    driver.get(login_link(daemon))
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "status").text == "live")
    feed_waiters(daemon)


def test_page_lists_mailboxes_and_shows_new_mail_live(daemon: Daemon, browser: Any) -> None:
    client = daemon.client()
    client.send("alice", "bob", "hello bob")
    client.send("carol", "alice", "<b>not bold</b> <img src=x onerror=alert(1)>")
    open_page(browser, daemon)
    assert "#token" not in browser.current_url  # the token left the address bar for sessionStorage
    names = texts(browser, "#mailboxes .name")
    assert {"alice", "bob", "carol"} <= set(names)
    bodies = texts(browser, "#thread .msg .body")
    assert bodies == ["hello bob", "<b>not bold</b> <img src=x onerror=alert(1)>"]  # text, never markup
    assert not browser.find_elements(By.CSS_SELECTOR, "#thread b, #thread img")
    unread = browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#mailboxes .box'),"
        " (b) => [b.dataset.name, b.querySelector('.unread')?.textContent ?? '0']))"
    )
    assert (unread["bob"], unread["alice"], unread["carol"]) == ("1", "1", "0")  # unread counts
    browser.execute_script("window.notReloaded = true")

    sent_at = time.monotonic()
    client.send("bob", "alice", "a reply, live")
    WebDriverWait(browser, SHOWN_WITHIN, poll_frequency=0.02).until(
        lambda d: "a reply, live" in texts(d, "#thread .msg .body")
    )
    assert time.monotonic() - sent_at < SHOWN_WITHIN
    assert browser.execute_script("return window.notReloaded") is True
    assert texts(browser, "#thread .msg .body")[-1] == "a reply, live"  # newest at the bottom
    # Watching consumed nothing and marked nothing read.
    assert client.peek("bob")["pending"] == 1 and client.peek("alice")["pending"] == 2
    assert texts(browser, "#thread .msg .state") == ["unread"] * 3


def test_conversation_between_two_and_a_note_the_recipient_checks(daemon: Daemon, browser: Any) -> None:
    client = daemon.client()
    client.send("alice", "bob", "to bob")
    client.send("bob", "alice", "to alice")
    client.send("carol", "alice", "carol's aside")
    assert run_cli("check", "--name", "bob", env=daemon.env()).returncode == 0  # bob read his
    open_page(browser, daemon)
    retrying(browser, lambda d: d.find_element(By.CSS_SELECTOR, '#mailboxes .box[data-name="alice"]').click())
    WebDriverWait(browser, 5).until(lambda d: len(texts(d, "#thread .msg .body")) == 3)
    retrying(browser, lambda d: Select(d.find_element(By.ID, "peer")).select_by_value("bob"))
    WebDriverWait(browser, 5).until(lambda d: texts(d, "#thread .msg .body") == ["to bob", "to alice"])
    assert texts(browser, "#thread .msg .state") == ["read", "unread"]

    browser.find_element(By.ID, "note").send_keys("please rebase onto main")
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 5).until(lambda d: d.find_element(By.ID, "status").text == "note sent to alice")
    check = run_cli("check", "--name", "alice", env=daemon.env())
    assert check.returncode == 0, check.stderr
    assert "from human" in check.stdout and '"please rebase onto main"' in check.stdout


ATTACK_PAGE = """<!doctype html><title>attack</title><script>
const target = %s;
const results = {};
fetch(target + "/v1/send", {method: "POST", headers: {"Content-Type": "application/json", "X-Mailbox": "evil"},
  body: JSON.stringify({to: "victim", body: "json from another origin"})})
  .then(r => { results.json = "status " + r.status; }, e => { results.json = "blocked: " + e.name; })
  .then(() => fetch(target + "/v1/send", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({from: "evil", to: "victim", body: "text/plain from another origin"})}))
  .then(r => { results.simple = "opaque " + r.type; }, e => { results.simple = "blocked: " + e.name; })
  .then(() => fetch(target + "/v1/feed")).then(r => { results.read = "status " + r.status; },
    e => { results.read = "blocked: " + e.name; })
  .then(() => { document.title = JSON.stringify(results); });
</script>"""


def test_a_page_from_another_origin_can_neither_write_nor_read(daemon: Daemon, browser: Any) -> None:
    daemon.client().send("alice", "victim", "private")
    page = (ATTACK_PAGE % json.dumps(daemon.url)).encode()

    class AttackPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), AttackPage)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{attacker.server_address[1]}/")
        WebDriverWait(browser, 10).until(lambda d: d.title.startswith("{"))
        results = json.loads(browser.title)
    finally:
        attacker.shutdown()
        attacker.server_close()
    # The JSON write needs a CORS preflight, which the daemon never grants; the read gets no CORS grant.
    assert results["json"] == "blocked: TypeError"
    assert results["read"] == "blocked: TypeError"
    assert results["simple"] == "opaque opaque"  # sent blind: the daemon refused it (415, not JSON)
    assert daemon.client().peek("victim")["pending"] == 1  # nothing stored
    assert [m["body"] for m in feed(daemon, "victim")] == ["private"]


def feed(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{daemon.url}/v1/feed?name={name}", headers=auth.auth_header(str(daemon.home)))
    with urllib.request.urlopen(request, timeout=10) as response:
        return list(json.load(response)["messages"])


def test_the_page_forbids_framing_foreign_scripts_and_referrers(daemon: Daemon) -> None:
    for path in ("/", "/static/app.js", "/static/style.css"):
        with urllib.request.urlopen(daemon.url + path, timeout=10) as response:
            headers = response.headers
            assert response.status == 200 and response.read()
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(daemon.url + "/static/../store.py", timeout=10)
    assert missing.value.code == 404


BAD_FEED_QUERIES = [
    ("after=-1", "after must be a whole number"),
    ("limit=501", "limit must be a whole number from 0 to 500"),
    ("wait=61", "wait must be a whole number from 0 to 60"),
    ("since=yesterday", "since must be a UTC time"),
    ("peer=bob", "peer needs name"),
    ("name=bad%20name", "name must be 1 to 64 characters"),
    ("name=a&name=b", "given more than once"),
    ("limit=1&x=1", "unknown query parameter(s): x"),
]


def test_bad_feed_queries_get_400_in_the_one_error_shape(daemon: Daemon) -> None:
    for query, words in BAD_FEED_QUERIES:
        request = urllib.request.Request(f"{daemon.url}/v1/feed?{query}", headers=auth.auth_header(str(daemon.home)))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400, query
        error = json.load(refused.value)["error"]
        assert error["code"] == "invalid_input" and words in error["message"], (query, error)


def test_bidi_zero_width_and_control_characters_show_escaped(daemon: Daemon, browser: Any) -> None:
    """Issue 20.7: "RTL \u202eevil" must not display as "RTL live"; the page writes what the CLI writes."""
    client = daemon.client()
    client.send("mallory", "bob", "RTL \u202eevil")
    client.send("mallory", "bob", "zero\u200bwidth, bell\x07, cr\r; line one\nline two \U0001f600")
    open_page(browser, daemon)
    bodies = texts(browser, "#thread .msg .body")
    assert bodies == [
        "RTL \\u202eevil",
        "zero\\u200bwidth, bell\\u0007, cr\\u000d; line one\nline two \U0001f600",  # newline and emoji stay
    ]
