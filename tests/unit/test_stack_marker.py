"""`@pytest.mark.stacks`: a test for some stacks runs on those selected, and is deselected (not skipped) otherwise."""

from __future__ import annotations

import pytest

from tests.conftest import STACKS_ENV

pytest_plugins = ["pytester"]

# `stack` is replaced by a plain parameter echo, so no service starts: what is checked is what gets collected.
TESTS = """
import pytest

@pytest.fixture(scope="session")
def stack(request):
    return request.param

def test_everywhere(stack):
    pass

@pytest.mark.stacks("apache")
def test_apache_only(stack):
    pass

@pytest.mark.stacks("apache")
def test_own_apache():  # starts its own Apache Kafka, takes no `stack`
    pass
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, stacks: str) -> pytest.RunResult:
    monkeypatch.setenv(STACKS_ENV, stacks)
    pytester.makepyfile(test_marked=TESTS)
    return pytester.runpytest_subprocess("-p", "tests.conftest", "-v", "-rs")


def test_with_apache_selected_each_runs_on_its_stacks(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "apache,embedded")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_apache_only?apache? PASSED*"])
    result.stdout.no_fnmatch_line("*test_apache_only?embedded?*")


def test_without_apache_its_tests_are_deselected_not_skipped(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "embedded")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*test_everywhere?embedded? PASSED*"])


def test_an_unknown_stack_name_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STACKS_ENV, "embedded")
    pytester.makepyfile(test_typo='import pytest\n\n@pytest.mark.stacks("apach")\ndef test_x(stack):\n    pass\n')
    result = pytester.runpytest_subprocess("-p", "tests.conftest")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*test_x: @pytest.mark.stacks takes stack names out of*"])
