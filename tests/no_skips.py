"""No test may skip: a pytest plug-in that turns every skip into a failure naming its reason.

A skipped test is a test a newcomer never runs (on a fresh machine the suite once reported 16
skipped and looked green). What the tests need is installed by ``bash scripts/test.sh``; a
missing system package fails with its install command. This guard catches whatever slips in
anyway: ``pytest.skip``, ``skipif``, ``importorskip`` (in a test, a fixture or at import), a
plug-in's skip. Expected failures (``xfail``) are not skips and are left alone.
"""

from __future__ import annotations

from typing import Any

import pytest

RULE = "tests never skip (tests/no_skips.py)"


def _reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return f"{longrepr[2]} at {longrepr[0]}:{longrepr[1]}"
    return str(longrepr)


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    report.outcome = "failed"
    report.longrepr = f"{RULE}; this one skipped: {_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        _fail(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        _fail(report)
