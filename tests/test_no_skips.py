"""The no-skip guard (tests/no_skips.py): every way a test can skip ends as a failure."""

from __future__ import annotations

import pytest

SKIPPING = '''
import pytest

def test_skip_call():
    pytest.skip("no chromium")

@pytest.mark.skipif(True, reason="no dataset")
def test_skipif():
    pass

@pytest.fixture
def needs_server():
    pytest.skip("no server")

def test_skip_in_a_fixture(needs_server):
    pass

def test_importorskip_in_a_test():
    pytest.importorskip("no_such_module_crowdloop")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_xfail_is_not_a_skip():
    assert False

def test_passes():
    pass
'''


def test_every_kind_of_skip_fails_with_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_skipping=SKIPPING)
    result = pytester.runpytest("-p", "tests.no_skips", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2, errors=2, passed=1, xfailed=1)  # skips in setup (skipif, fixtures) are errors
    for reason in ("no chromium", "no dataset", "no server", "no_such_module_crowdloop"):
        result.stdout.fnmatch_lines([f"*tests never skip*{reason}*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_module_that_skips_at_import_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gone='import pytest\npytest.importorskip("no_such_module_crowdloop")\n\n'
                                  "def test_never_runs():\n    pass\n")
    result = pytester.runpytest("-p", "tests.no_skips", "-p", "no:cacheprovider")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*tests never skip*no_such_module_crowdloop*"])
    assert "skipped" not in result.stdout.lines[-1]
