#!/usr/bin/env bash
# Install the external tools the end-to-end tests drive into <repo>/.tools (gitignored).
#
#   scripts/install-tools.sh          # idempotent; a no-op when the pinned version is present
#
# Installs the real Claude Code CLI (npm package @anthropic-ai/claude-code, pinned) so that
# tests/claude_code.py can run it offline against tests/fake_anthropic.py.
# Override the pin with CLAUDE_CODE_VERSION=x.y.z.
# Also installs the distribution's chromium + chromium-driver (apt-get, as root) for tests/test_webui.py.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
version="${CLAUDE_CODE_VERSION:-2.1.330}"
pkg="@anthropic-ai/claude-code"
bin="$tools/node_modules/.bin/claude"
pkg_json="$tools/node_modules/@anthropic-ai/claude-code/package.json"

# tests/test_webui.py drives the distribution's headless Chromium through chromedriver (CI runs as root).
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "install-tools.sh: chromium + chromedriver missing (apt-get install chromium chromium-driver); the web page tests will skip" >&2
    fi
fi

installed_version() {
    [ -f "$pkg_json" ] || return 1
    # No dependency on jq or node for the fast path: read "version" with sed.
    sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$pkg_json" | head -n 1
}

if [ "$(installed_version || true)" = "$version" ] && [ -x "$bin" ] \
    && "$bin" --version >/dev/null 2>&1; then
    echo "claude-code $version already installed: $bin"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install-tools.sh: npm not found; install Node.js (>= 18) and npm first" >&2
    exit 1
fi

mkdir -p "$tools"
echo "installing $pkg@$version into $tools ..."
npm install --prefix "$tools" --no-audit --no-fund --save-exact --loglevel=error "$pkg@$version"

if ! out="$("$bin" --version 2>&1)"; then
    echo "install-tools.sh: $bin --version failed:" >&2
    echo "$out" >&2
    exit 1
fi
echo "installed: $bin ($out)"
