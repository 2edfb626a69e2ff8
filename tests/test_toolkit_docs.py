"""docs/testing.md against the toolkit: its Python examples run in order in one interpreter, its
pytest examples run under pytest in a fresh project, and the index links to it."""

from __future__ import annotations

import os

import pytest

from tests.conftest import ROOT
from tests.test_docs import code_blocks, relative_links, run_page
from tests.test_toolkit_pytest_plugin import installed_entry_point, stand_in_distribution

pytest_plugins = ["pytester"]

TESTING = ROOT / "docs" / "testing.md"


@pytest.fixture(scope="module")
def page_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str | None], str]:
    """docs/testing.md, run once for the tests that look at its blocks."""
    return run_page(TESTING, tmp_path_factory.mktemp("testing-page"))


_BLOCKS = [
    pytest.param(line, code, id=f"line-{line}")
    for line, code, no_test in code_blocks(TESTING, "python")
    if not no_test
]


class TestTestingPage:
    def test_the_page_has_examples_that_assert(self) -> None:
        """The page has runnable Python examples, each asserting what it shows, and pytest
        examples (marked no-test for the plain runner)."""
        blocks = code_blocks(TESTING, "python")
        runnable = [code for _, code, no_test in blocks if not no_test]
        assert len(runnable) >= 6
        assert all("assert" in code for code in runnable)
        assert any(no_test for _, _, no_test in blocks)

    @pytest.mark.parametrize(("line", "code"), _BLOCKS)
    def test_example_runs(
        self, line: int, code: str, page_run: tuple[dict[str, str | None], str]
    ) -> None:
        """The block ran without error after the blocks above it."""
        results, output = page_run
        assert str(line) in results, f"the block at line {line} did not run:\n{code}\n{output}"
        problem = results[str(line)]
        assert problem is None, f"the block at line {line} failed:\n{code}\n{problem}\n{output}"

    def test_pytest_examples_pass_under_pytest(
        self,
        pytester: pytest.Pytester,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        """The pytest examples pass in a fresh project that has only the package installed."""
        examples = [code for _, code, no_test in code_blocks(TESTING, "python") if no_test]
        for number, code in enumerate(examples):
            pytester.makepyfile(**{f"test_example_{number}": code})
        monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
        paths = [str(ROOT)]
        if not installed_entry_point():
            paths.insert(0, str(stand_in_distribution(tmp_path_factory.mktemp("site"))))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
        result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
        count = sum(code.count("\ndef test_") for code in examples)
        result.assert_outcomes(passed=count)

    def test_the_index_links_to_it(self) -> None:
        """docs/index.md links to the page."""
        assert "testing.md" in relative_links(ROOT / "docs" / "index.md")
