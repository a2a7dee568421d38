"""Make docs/webui.png (desktop, light) and docs/webui-phone.png (phone width, dark) of the web page:
a throwaway daemon with three sessions and a conversation, shot in the headless Chromium that
tests/test_webui.py uses.

    .venv/bin/python docs/screenshot.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "daemon"), str(REPO / "tests")]

from claude_mailbox import auth  # noqa: E402
from harness import start_daemon  # noqa: E402
from test_webui import make_browser  # noqa: E402

SESSIONS = [  # (prefix, session id, project)
    ("api", "1a2b3c4d-0000-4000-8000-000000000001", "/home/dev/shop/api"),
    ("web", "5e6f7a8b-0000-4000-8000-000000000002", "/home/dev/shop/web"),
    ("docs", "9c0d1e2f-0000-4000-8000-000000000003", "/home/dev/shop/docs"),
]
CONVERSATION = [
    (0, 1, "I renamed /v1/orders to /v1/purchases; the old path answers 308 until Friday."),
    (1, 0, "Thanks. Does the purchase object still carry `total_cents`?"),
    (0, 1, "Yes, plus `currency`. Schema is in api/openapi.json."),
    (1, 2, "Please document the rename in the changelog."),
    (0, 1, "Pushed the migration, tests green. Your turn for the checkout form."),
]


def post(url: str, path: str, body: dict[str, object], headers: dict[str, str]) -> None:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}
    )
    urllib.request.urlopen(request, timeout=10).read()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ["CLAUDE_MAILBOX_HOME"] = str(home)
        daemon = start_daemon(home)
        try:
            token = auth.auth_header(str(home))
            names = []
            for prefix, session_id, project in SESSIONS:
                hook = {"session_id": session_id, "cwd": project, "source": "startup"}
                headers = {**token, "X-Mailbox-Claude-Pid": str(os.getpid()), "X-Mailbox-Prefix": prefix}
                post(daemon.url, "/v1/hooks/session-start", hook, headers)
                names.append(f"{prefix}-{session_id[:8]}")
            client = daemon.client()
            for sender, recipient, body in CONVERSATION:
                client.send(names[sender], names[recipient], body)
            subprocess.run(  # web has read its mail: the page shows it as read
                [sys.executable, "-m", "claude_mailbox", "check", "--name", names[1]],
                env={**daemon.env()},
                capture_output=True,
                check=True,
            )
            client.send(names[0], names[1], "One more: the 308 now keeps the query string.")
            client.send("human", names[0], "Lunch break at 12:30, finish the current step first.")
            link = f"{daemon.url}/#token={auth.read_token(str(home))}"
            for target, width, height, dark in (("webui.png", 1100, 620, False), ("webui-phone.png", 390, 760, True)):
                driver = make_browser(Path(tmp) / f"profile-{target}", width, height, dark)
                try:
                    driver.get(link)
                    time.sleep(1.0)
                    driver.find_element("css selector", f'#mailboxes .box[data-name="{names[0]}"]').click()
                    time.sleep(0.3)
                    driver.find_element("css selector", "#peer").send_keys(names[1])
                    time.sleep(1.0)
                    driver.save_screenshot(str(REPO / "docs" / target))
                finally:
                    driver.quit()
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
