"""Fixtures shared by the vendor tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.vendors.browser import ARGS, CHROMIUM, require_chromium

if TYPE_CHECKING:  # the fake needs boto3, imported only when a test asks for it
    from tests.vendors.mturk_fake import FakeMTurk


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Chromium per test module (see ``tests/vendors/browser.py``)."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeMTurk:
    """Mechanical Turk faked behind boto3's real client, with dummy credentials."""
    from crowdloop.vendors import mturk
    from tests.vendors.mturk_fake import FakeMTurk

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fake = FakeMTurk()
    monkeypatch.setattr(mturk, "_session_factory", fake.session)
    return fake
