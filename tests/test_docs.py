"""The user documentation under docs/ against the code it describes.

Hooks and manifest fields are found by introspection, so a hook or a field added without
documentation fails here; the examples of the getting-started guide and of the error-handling guide
are run; every Python block of the documentation must at least parse; relative links are followed.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import attrs
import pytest

from tests.conftest import ROOT
from wasm_plugins import hookspecs
from wasm_plugins.manifest import Manifest

DOCS = ROOT / "docs"
HOOKS_DOC = DOCS / "hooks.md"
MANIFEST_DOC = DOCS / "manifest.md"
GETTING_STARTED = DOCS / "getting-started.md"
ERROR_HANDLING = DOCS / "error-handling.md"
NO_TEST = "<!-- no-test -->"
HOOK_PREFIX = "wasm_plugins_"

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)


# -- Markdown helpers ----------------------------------------------------------------------------


def _without_code(lines: list[str]) -> list[str]:
    """The lines with fenced code blocks blanked (headings and links there are not Markdown)."""
    result = []
    fence: str | None = None
    for line in lines:
        match = _FENCE.match(line.strip())
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
            result.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            result.append("")
        else:
            result.append(line)
    return result


def sections(path: Path, level: int) -> dict[str, str]:
    """The text under each heading of ``level`` (up to the next heading of that level or above),
    keyed by the heading's text without backticks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    prose = _without_code(lines)
    found: dict[str, str] = {}
    title: str | None = None
    start = 0
    for number, line in enumerate(prose):
        match = _HEADING.match(line)
        if match and len(match.group(1)) <= level:
            if title is not None:
                found[title] = "\n".join(lines[start:number])
            title = match.group(2).replace("`", "") if len(match.group(1)) == level else None
            start = number + 1
    if title is not None:
        found[title] = "\n".join(lines[start:])
    return found


def code_blocks(path: Path, language: str) -> list[tuple[int, str, bool]]:
    """Every fenced block of ``language``: (line number, code, marked ``<!-- no-test -->``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    number = 0
    while number < len(lines):
        match = _FENCE.match(lines[number].strip())
        if not match:
            number += 1
            continue
        fence = match.group(1)
        start = number
        body = []
        number += 1
        while number < len(lines) and lines[number].strip() != fence:
            body.append(lines[number])
            number += 1
        number += 1
        if match.group(2).lower() != language:
            continue
        previous = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        blocks.append((start + 1, "\n".join(body) + "\n", previous == NO_TEST))
    return blocks


def relative_links(path: Path) -> list[str]:
    """The targets of inline, image and reference links that are not URLs (``#anchor`` included)."""
    text = "\n".join(_without_code(path.read_text(encoding="utf-8").splitlines()))
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [*_LINK.findall(text), *_IMAGE.findall(text), *_REFERENCE.findall(text)]
    return [target for target in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)]


# -- what the code defines -----------------------------------------------------------------------


def hook_functions() -> dict[str, typing.Callable[..., object]]:
    """Every hook of wasm_plugins.hookspecs, by name."""
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith(HOOK_PREFIX)
    }


def hook_options(function: typing.Callable[..., object]) -> dict[str, object]:
    """The hookspec options pluggy recorded on a hook (firstresult, historic, ...)."""
    options = getattr(function, f"{hookspecs.PROJECT_NAME}_spec", None)
    return dict(options) if isinstance(options, dict) else {}


def manifest_records() -> list[type]:
    """Manifest and every attrs class reachable through the types of its fields."""
    found: list[type] = []
    pending: list[object] = [Manifest]
    while pending:
        kind = pending.pop(0)
        if isinstance(kind, type) and attrs.has(kind):
            if kind in found:
                continue
            found.append(kind)
            attrs.resolve_types(kind)
            pending.extend(field.type for field in attrs.fields(kind))
        else:
            pending.extend(typing.get_args(kind))
    return found


def record_section(record: type) -> str:
    """The ``##`` section of docs/manifest.md whose heading names the record's class."""
    matches = [
        text
        for title, text in sections(MANIFEST_DOC, 2).items()
        if re.search(rf"\b{record.__name__}\b", title)
    ]
    assert len(matches) == 1, f"docs/manifest.md needs one ## section naming {record.__name__}"
    return matches[0]


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (duplicates numbered)."""
    anchors: set[str] = set()
    for line in _without_code(path.read_text(encoding="utf-8").splitlines()):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(2).lower()).replace(" ", "-")
        candidate, number = slug, 0
        while candidate in anchors:
            number += 1
            candidate = f"{slug}-{number}"
        anchors.add(candidate)
    return anchors


def documented_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


# -- the tests -----------------------------------------------------------------------------------


class TestHookReference:
    """docs/hooks.md has one section per hook of wasm_plugins.hookspecs, and no other."""

    def test_hooks_are_found_by_introspection(self) -> None:
        """The hook list is read from the hookspecs module and includes the attempt hook."""
        hooks = hook_functions()
        assert "wasm_plugins_attempt" in hooks
        assert all(hook_options(function) for function in hooks.values()), (
            "every wasm_plugins_ function of hookspecs is marked as a hookspec"
        )

    @pytest.mark.parametrize("hook", sorted(hook_functions()))
    def test_every_hook_has_a_section(self, hook: str) -> None:
        """Each hook has a ``## <hook name>`` section in docs/hooks.md."""
        assert hook in sections(HOOKS_DOC, 2), f"docs/hooks.md has no '## {hook}' section"

    @pytest.mark.parametrize("hook", sorted(hook_functions()))
    def test_every_argument_is_described(self, hook: str) -> None:
        """Each argument of a hook's signature is named as ``argument`` in the hook's section."""
        section = sections(HOOKS_DOC, 2).get(hook, "")
        arguments = list(inspect.signature(hook_functions()[hook]).parameters)
        missing = [name for name in arguments if f"``{name}``" not in section]
        assert not missing, f"the section of {hook} does not describe {missing}"

    @pytest.mark.parametrize("hook", sorted(hook_functions()))
    def test_call_semantics_match_the_hookspec(self, hook: str) -> None:
        """The section's ``Kind:`` line says firstresult and historic exactly when the spec is."""
        section = sections(HOOKS_DOC, 2).get(hook, "")
        kind_lines = [line for line in section.splitlines() if line.startswith("Kind:")]
        assert len(kind_lines) == 1, f"the section of {hook} needs one 'Kind:' line"
        options = hook_options(hook_functions()[hook])
        for option in ("firstresult", "historic"):
            assert (option in kind_lines[0]) == bool(options.get(option)), (
                f"{hook}: the Kind line and the hookspec disagree about {option}"
            )

    def test_no_section_for_a_hook_that_does_not_exist(self) -> None:
        """Every ``## wasm_plugins_...`` section names a hook of wasm_plugins.hookspecs."""
        titles = [title for title in sections(HOOKS_DOC, 2) if title.startswith(HOOK_PREFIX)]
        unknown = sorted(set(titles) - set(hook_functions()))
        assert titles, "docs/hooks.md has no hook section"
        assert not unknown, f"docs/hooks.md documents hooks that do not exist: {unknown}"
        assert len(titles) == len(set(titles)), "a hook has two sections"


class TestManifestReference:
    """docs/manifest.md describes every field of Manifest and of the records it contains."""

    def test_records_are_found_by_introspection(self) -> None:
        """The records reached from Manifest include the nested ones, down to WasiPreopen."""
        names = {record.__name__ for record in manifest_records()}
        assert {"Manifest", "ModuleSpec", "FunctionSpec", "Limits", "WasiSpec"} <= names
        assert {"WasiPreopen", "PolicySpec"} <= names

    @pytest.mark.parametrize("record", manifest_records(), ids=lambda record: record.__name__)
    def test_every_field_is_in_its_record_section(self, record: type) -> None:
        """Each field appears as `field` in the section whose heading names its record."""
        section = record_section(record)
        missing = [field.name for field in attrs.fields(record) if f"`{field.name}`" not in section]
        assert not missing, f"docs/manifest.md does not describe {record.__name__}: {missing}"

    def test_the_complete_example_is_a_valid_manifest(self) -> None:
        """The first TOML block, the complete example, is read by Manifest.from_toml as it is."""
        example = code_blocks(MANIFEST_DOC, "toml")[0][1]
        manifest = Manifest.from_toml(example)
        assert manifest.name == "text-tools"
        given = {field.name for field in attrs.fields(Manifest) if field.name in example}
        assert given >= {"limits", "wasi", "policy", "functions", "config"}

    def test_no_field_is_documented_that_does_not_exist(self) -> None:
        """The first column of every field table names a field of that section's record."""
        for record in manifest_records():
            fields = {field.name for field in attrs.fields(record)}
            rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|", record_section(record), re.MULTILINE)
            assert rows, f"the {record.__name__} section has no field table"
            unknown = sorted(set(rows) - fields)
            assert not unknown, f"{record.__name__} has no field(s) {unknown}"


_RUNNABLE = [
    pytest.param(code, id=f"line-{line}")
    for line, code, skipped in code_blocks(GETTING_STARTED, "python")
    if not skipped
]


class TestGettingStartedExamples:
    """The Python examples of docs/getting-started.md run as they are from the repository root."""

    def test_the_guide_has_runnable_examples(self) -> None:
        """Most Python blocks of the guide are runnable, so the test below checks something."""
        blocks = code_blocks(GETTING_STARTED, "python")
        assert len(_RUNNABLE) >= 10
        assert len(_RUNNABLE) > len(blocks) / 2

    @pytest.mark.parametrize("code", _RUNNABLE)
    def test_example_runs(self, code: str) -> None:
        """The block runs without error in a fresh interpreter, working directory the root."""
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=example_environment(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"the example failed:\n{code}\n{result.stderr}"


def example_environment() -> dict[str, str]:
    """The environment examples run in: this one without WASM_PLUGINS_* variables (and without
    SENTRY_DSN, so the set of built-in reporters is the same everywhere), the root on the path.
    WASM_PLUGINS_CACHE_DIR is kept: it changes where compiled modules are cached, not what an
    example does, and keeps the tests out of the user's cache."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if (not name.startswith("WASM_PLUGINS") or name == "WASM_PLUGINS_CACHE_DIR")
        and name != "SENTRY_DSN"
    }
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, (str(ROOT), environment.get("PYTHONPATH")))
    )
    return environment


# Runs the blocks of one page in order in one namespace; writes {line: None or traceback} after
# each block, so that a crash or a timeout still tells which blocks ran.
_PAGE_RUNNER = """
import json, sys, traceback
blocks_file, report_file, page = sys.argv[1:4]
with open(blocks_file, encoding="utf-8") as source:
    blocks = json.load(source)
namespace = {"__name__": "__main__"}
results = {}
failed = None
for line, code in blocks:
    if failed is not None:
        results[line] = f"not run: the block at line {failed} failed first"
    else:
        try:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)
        except BaseException:
            failed = line
            results[line] = traceback.format_exc()
        else:
            results[line] = None
    with open(report_file, "w", encoding="utf-8") as report:
        json.dump(results, report)
"""


def run_page(path: Path, directory: Path) -> tuple[dict[str, str | None], str]:
    """Run every Python block of a page cumulatively in one fresh interpreter from the root:
    ({line: None when the block ran, else why not}, the interpreter's output)."""
    blocks = [(line, code) for line, code, _ in code_blocks(path, "python")]
    blocks_file = directory / "blocks.json"
    report_file = directory / "report.json"
    blocks_file.write_text(json.dumps(blocks), encoding="utf-8")
    page = path.relative_to(ROOT).as_posix()
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PAGE_RUNNER, str(blocks_file), str(report_file), page],
            cwd=ROOT,
            env=example_environment(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        output = f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    except subprocess.TimeoutExpired as expired:
        output = f"timed out after {expired.timeout} s\n{expired.stdout}\n{expired.stderr}"
    results: dict[str, str | None] = {}
    if report_file.exists():
        results = json.loads(report_file.read_text(encoding="utf-8"))
    return results, output


@pytest.fixture(scope="module")
def page_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str | None], str]:
    """docs/error-handling.md, run once for all the tests that look at its blocks."""
    return run_page(ERROR_HANDLING, tmp_path_factory.mktemp("error-handling"))


_ERROR_HANDLING_BLOCKS = [
    pytest.param(line, code, id=f"line-{line}")
    for line, code, _ in code_blocks(ERROR_HANDLING, "python")
]


class TestErrorHandlingExamples:
    """The Python examples of docs/error-handling.md run as they are from the repository root.

    The examples of that page build on each other (the first defines the ``FakeClock`` and the
    event recorder the others use), so they run cumulatively: every block of the page, in order,
    in one fresh interpreter for the page, sharing one namespace, as if pasted one after another
    into one Python session. Each block is still its own test: it fails with its traceback (the
    file name reads ``docs/error-handling.md:<line of the fence>``), and every block after a failed
    one fails as not run. Every Python block of the page runs (none may be marked no-test), and
    each asserts what it shows, so a change in behaviour fails here.
    """

    def test_every_block_runs_and_asserts(self) -> None:
        """The page has many Python blocks, none marked no-test, each with an assert."""
        blocks = code_blocks(ERROR_HANDLING, "python")
        assert len(blocks) >= 15
        skipped = [line for line, _, no_test in blocks if no_test]
        assert not skipped, f"blocks marked {NO_TEST} at lines {skipped}: every block must run"
        silent = [line for line, code, _ in blocks if not re.search(r"^\s*assert\b", code, re.M)]
        assert not silent, f"blocks without an assert at lines {silent}"

    @pytest.mark.parametrize(("line", "code"), _ERROR_HANDLING_BLOCKS)
    def test_example_runs(
        self, line: int, code: str, page_run: tuple[dict[str, str | None], str]
    ) -> None:
        """The block ran without error after the blocks above it."""
        results, output = page_run
        assert str(line) in results, f"the block at line {line} did not run:\n{code}\n{output}"
        problem = results[str(line)]
        assert problem is None, f"the block at line {line} failed:\n{code}\n{problem}\n{output}"


class TestPythonBlocksParse:
    """Every Python block of README.md and docs/*.md, run or not, is valid Python."""

    @pytest.mark.parametrize("document", documented_files(), ids=lambda path: path.name)
    def test_blocks_parse(self, document: Path) -> None:
        """Each ``python`` block parses (examples marked no-test included)."""
        broken = []
        for line, code, _ in code_blocks(document, "python"):
            try:
                ast.parse(code)
            except SyntaxError as error:
                broken.append(f"line {line}: {error}")
        assert not broken, f"{document.name} has Python blocks that do not parse: {broken}"


class TestRelativeLinks:
    """Relative links in README.md and docs/*.md point to files that exist."""

    def test_the_documents_have_links(self) -> None:
        """The link finder sees the links of docs/index.md, so a broken one would be noticed."""
        assert "getting-started.md" in relative_links(DOCS / "index.md")
        assert "../hostapi/ABI.md" in relative_links(DOCS / "index.md")

    @pytest.mark.parametrize("document", documented_files(), ids=lambda path: path.name)
    def test_every_relative_link_resolves(self, document: Path) -> None:
        """Each relative link, without its #anchor, names an existing file or folder."""
        broken = [
            target
            for target in relative_links(document)
            if not (document.parent / target.split("#", 1)[0]).exists()
        ]
        assert not broken, f"{document.name} links to missing files: {broken}"

    @pytest.mark.parametrize("document", documented_files(), ids=lambda path: path.name)
    def test_every_anchor_into_a_markdown_file_exists(self, document: Path) -> None:
        """Each #anchor into a Markdown file (the same one included) names one of its headings."""
        broken = []
        for target in relative_links(document):
            file, _, anchor = target.partition("#")
            path = document.parent / file if file else document
            known = path.suffix == ".md" and path.exists()
            if anchor and known and anchor not in heading_anchors(path):
                broken.append(target)
        assert not broken, f"{document.name} links to missing headings: {broken}"
