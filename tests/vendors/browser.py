"""Real Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright.

Playwright never downloads a browser here; ``bash scripts/test.sh`` installs ``chromium`` with
apt. The ``browser`` fixture (``tests/vendors/conftest.py``) fails with the install command when
it is missing: the browser tests never skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialing Google's hosts, which this
# machine's closed network refuses.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    """Fail (never skip) with the install command when Debian's Chromium is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"needs Debian's chromium at {CHROMIUM}: apt-get install -y chromium "
                    "(or run bash scripts/test.sh, which installs it)", pytrace=False)
