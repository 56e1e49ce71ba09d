#!/usr/bin/env bash
# Screenshots of the web console's main pages for docs/console.md: runs the browser test
# (tests/e2e/test_console_browser.py), which saves PNGs where MODELHOST_CONSOLE_SCREENSHOTS
# says. Needs Debian's chromium (`make install-browser`) and the test extra (playwright).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-docs/img}"
MODELHOST_CONSOLE_SCREENSHOTS="$OUT" .venv/bin/pytest -q tests/e2e/test_console_browser.py
ls -1 "$OUT"/console-*.png
