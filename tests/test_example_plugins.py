"""The example plugins under plugins/: the text-tools C module and the hostile-pack WAT modules.

The host that finds plugins through their manifests is not written yet, so each module is loaded by
path with Sandbox, under the limits its manifest declares, on every engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ALL_ENGINE_NAMES, HOSTAPI, ROOT, engine_named
from wasm_plugins.engine import Engine, FuncSignature
from wasm_plugins.errors import (
    CommunicationError,
    DeadlineExceeded,
    ExecutionError,
    ResourceLimitExceeded,
)
from wasm_plugins.sandbox import Limits, Sandbox

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PLUGINS = ROOT / "plugins"
TEXT_TOOLS = PLUGINS / "text-tools" / "src" / "wasm_plugins_text_tools"
HOSTILE = PLUGINS / "hostile-pack" / "src" / "wasm_plugins_hostile_pack"
HOSTILE_PLUGINS = (
    "endless-loop",
    "memory-bomb",
    "trapper",
    "bad-output",
    "capability-thief",
    "wasi-escape",
)
PLUGIN_FUNCTION = FuncSignature(("i32", "i32"), ("i64",))
MiB = 2**20


def read_manifest(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        return tomllib.load(file)


def load(manifest_path: Path, engine: Engine, **overrides: Any) -> Sandbox:
    """The manifest's module on `engine`, with the manifest's limits, functions and codec."""
    manifest = read_manifest(manifest_path)
    limits = Limits(**{**manifest.get("limits", {}), **overrides})
    return Sandbox(
        manifest_path.parent / manifest["module"]["resource"],
        engine=engine,
        limits=limits,
        codec=manifest["codec"],
        functions=list(manifest["functions"]),
        capabilities=manifest["capabilities"],
        name=manifest["name"],
    )


@pytest.fixture
def text_tools(engine: Engine) -> Sandbox:
    """The committed text-tools module on each engine, as its manifest describes it."""
    return load(TEXT_TOOLS / "plugin.toml", engine)


def memory_size(sandbox: Sandbox) -> int:
    return sandbox._state().session.instance.memory.size()


# -- reference implementations of the semantics documented in text_tools.c ----------------------

_SPECIAL_LETTERS = {
    **dict.fromkeys("Ææ", "ae"),
    **dict.fromkeys("ÐðĐđ", "d"),
    **dict.fromkeys("Øø", "o"),
    **dict.fromkeys("Þþ", "th"),
    "ß": "ss",
    **dict.fromkeys("Ħħ", "h"),
    "\u0131": "i",  # dotless i
    **dict.fromkeys("Ĳĳ", "ij"),
    "ĸ": "k",
    **dict.fromkeys("ĿŀŁł", "l"),
    "ŉ": "n",
    **dict.fromkeys("Ŋŋ", "ng"),
    **dict.fromkeys("Œœ", "oe"),
    **dict.fromkeys("Ŧŧ", "t"),
    "\u017f": "s",  # long s
}


def reference_letters(char: str) -> str:
    """What slugify keeps of one character: lower-case ASCII letters and digits, or ''."""
    if char.isascii():
        return char.lower() if char.isalnum() else ""
    if not ("\u00c0" <= char <= "\u017f" and unicodedata.category(char).startswith("L")):
        return ""
    if char in _SPECIAL_LETTERS:
        return _SPECIAL_LETTERS[char]
    decomposed = unicodedata.normalize("NFKD", char)
    return "".join(c for c in decomposed if c.isascii() and c.isalpha()).lower()


def reference_slugify(text: str, separator: str = "-") -> str:
    runs = re.split("\0+", "".join(reference_letters(c) or "\0" for c in text))
    return separator.join(run for run in runs if run)


def reference_word_count(text: str) -> dict[str, int]:
    unterminated = bool(text) and not text.endswith("\n")
    return {
        "words": len(text.split()),
        "lines": text.count("\n") + unterminated,
        "characters": len(text),
        "bytes": len(text.encode("utf-8")),
    }


def reference_top_words(text: str, n: int = 10) -> list[dict[str, Any]]:
    counts = Counter(word.lower() for word in re.findall("[A-Za-z0-9]+", text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"word": word, "count": count} for word, count in ranked[:n]]


# Text that reaches every branch: ASCII, Unicode whitespace, Latin letters to transliterate, other
# scripts, astral characters (surrogate pairs in JSON), control characters and JSON's specials.
texts = st.text(
    alphabet=st.one_of(
        st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2003\u2028\u3000"),
        st.sampled_from("aZ09-_'\"\\/\x00\x01\x7féÉßÆŁœ\u0131ĳ\u00d7÷ªµ²"),
        st.characters(codec="utf-8"),
    ),
    max_size=120,
)


class TestWordCount:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("", {"words": 0, "lines": 0, "characters": 0, "bytes": 0}),
            ("hello", {"words": 1, "lines": 1, "characters": 5, "bytes": 5}),
            ("hello world\n", {"words": 2, "lines": 1, "characters": 12, "bytes": 12}),
            ("a\nb", {"words": 2, "lines": 2, "characters": 3, "bytes": 3}),
            ("\n\n", {"words": 0, "lines": 2, "characters": 2, "bytes": 2}),
            ("a\r\nb\r\n", {"words": 2, "lines": 2, "characters": 6, "bytes": 6}),
            ("héllo wörld", {"words": 2, "lines": 1, "characters": 11, "bytes": 13}),
            ("日本語 テキスト", {"words": 2, "lines": 1, "characters": 8, "bytes": 22}),
            ("😀 👍🏽", {"words": 2, "lines": 1, "characters": 4, "bytes": 13}),
            ("a\u00a0b\u3000c\u2028d", {"words": 4, "lines": 1, "characters": 7, "bytes": 12}),
            ("tab\tsep\x0bvt\x1cfs", {"words": 4, "lines": 1, "characters": 13, "bytes": 13}),
        ],
    )
    def test_examples(self, text_tools: Sandbox, text: str, expected: dict[str, int]) -> None:
        """Counts of words, lines, code points and UTF-8 bytes for typical and Unicode text."""
        assert text_tools.call("word_count", {"text": text}) == expected

    def test_json_escapes_are_decoded(self, text_tools: Sandbox) -> None:
        """\\uXXXX escapes, surrogate pairs and short escapes count as what they encode."""
        raw = rb'{"text":"\u00e9\ud83d\ude00 \"q\" \\ \/ \b\f\n\r\t\u0000"}'
        result = json.loads(text_tools.call_bytes("word_count", raw))
        expected = reference_word_count(json.loads(raw)["text"])
        assert result == expected
        assert (result["characters"], result["bytes"]) == (17, 21)

    def test_lone_surrogates_become_replacement_characters(self, text_tools: Sandbox) -> None:
        """A lone surrogate escaped in raw JSON counts as U+FFFD in the guest; one in a Python
        string cannot be encoded faithfully, so the host refuses it as the caller's error
        before the guest runs."""
        escaped = rb'{"text":"a\ud800b\udc00"}'
        assert json.loads(text_tools.call_bytes("word_count", escaped))["bytes"] == 1 + 3 + 1 + 3
        with pytest.raises(CommunicationError) as refused:
            text_tools.call("word_count", {"text": "a\ud800b"})
        assert refused.value.channel == "input"

    def test_extra_and_null_fields(self, text_tools: Sandbox) -> None:
        """Unknown fields of any shape are skipped; a repeated field keeps its last value."""
        raw = b'{"x":[1,{"y":null},"z"],"text":"one","text":"two words","n":1e5}'
        assert json.loads(text_tools.call_bytes("word_count", raw))["words"] == 2

    def test_matches_reference(self, text_tools: Sandbox) -> None:
        """On arbitrary text, word_count agrees with the documented Python semantics."""

        @given(text=texts)
        def check(text: str) -> None:
            assert text_tools.call("word_count", {"text": text}) == reference_word_count(text)

        check()


class TestSlugify:
    @pytest.mark.parametrize(
        ("payload", "expected"),
        [
            ({"text": "Hello, World!"}, "hello-world"),
            ({"text": "  --Already--slugged--  "}, "already-slugged"),
            ({"text": "Crème Brûlée à la Française"}, "creme-brulee-a-la-francaise"),
            ({"text": "Straße Æsir Øresund Þór"}, "strasse-aesir-oresund-thor"),
            ({"text": "Łódź Dvořák Œuvre"}, "lodz-dvorak-oeuvre"),
            ({"text": "2 \u00d7 3 ÷ 4"}, "2-3-4"),
            ({"text": "日本語 text ελληνικά"}, "text"),
            ({"text": "!!!"}, ""),
            ({"text": ""}, ""),
            ({"text": "Snake Case Me", "separator": "_"}, "snake_case_me"),
            ({"text": "no sep here", "separator": ""}, "nosephere"),
            ({"text": "a b", "separator": None}, "a-b"),
            ({"text": "don't stop", "separator": " :: "}, "don :: t :: stop"),
        ],
    )
    def test_examples(self, text_tools: Sandbox, payload: dict[str, Any], expected: str) -> None:
        """Lower-case ASCII slugs, transliterated Latin letters, custom separators."""
        assert text_tools.call("slugify", payload) == expected

    @pytest.mark.parametrize("separator", ['"', "\\", "\n", "\t", "\x01\x1f", "é", "😀", "</>"])
    def test_separator_is_escaped(self, text_tools: Sandbox, separator: str) -> None:
        """Any separator comes back intact: the writer escapes quotes, backslashes and controls."""
        output = text_tools.call_bytes(
            "slugify", json.dumps({"text": "a b c", "separator": separator}).encode()
        )
        assert json.loads(output) == f"a{separator}b{separator}c"
        assert all(byte >= 0x20 for byte in output), "control characters are escaped"

    def test_matches_reference(self, text_tools: Sandbox) -> None:
        """On arbitrary text and separators, slugify agrees with the documented semantics."""

        @given(text=texts, separator=st.none() | st.text(max_size=3))
        def check(text: str, separator: str | None) -> None:
            payload: dict[str, Any] = {"text": text}
            if separator is not None:
                payload["separator"] = separator
            expected = reference_slugify(text, "-" if separator is None else separator)
            assert text_tools.call("slugify", payload) == expected

        check()


class TestTopWords:
    def test_ranking_and_ties(self, text_tools: Sandbox) -> None:
        """Most frequent first, case-folded, ties alphabetical, at most n."""
        text = "The cat and the hat. THE END; cat? Hat! and"
        assert text_tools.call("top_words", {"text": text, "n": 4}) == [
            {"word": "the", "count": 3},
            {"word": "and", "count": 2},
            {"word": "cat", "count": 2},
            {"word": "hat", "count": 2},
        ]

    def test_default_n_is_ten(self, text_tools: Sandbox) -> None:
        """Without n, ten words come back."""
        text = " ".join(f"w{i:02}" for i in range(25))
        result = text_tools.call("top_words", {"text": text})
        assert [entry["word"] for entry in result] == [f"w{i:02}" for i in range(10)]

    @pytest.mark.parametrize(("n", "length"), [(0, 0), (1, 1), (3, 3), (10**30, 5)])
    def test_n_bounds(self, text_tools: Sandbox, n: int, length: int) -> None:
        """n = 0 gives nothing, and an n larger than the vocabulary gives every word."""
        assert len(text_tools.call("top_words", {"text": "a b c d e a", "n": n})) == length

    def test_non_ascii_separates_words(self, text_tools: Sandbox) -> None:
        """Words are ASCII letters and digits only: accents and apostrophes split them."""
        result = text_tools.call("top_words", {"text": "café don't 42 x42", "n": 10})
        assert {entry["word"] for entry in result} == {"caf", "don", "t", "42", "x42"}

    def test_matches_reference(self, text_tools: Sandbox) -> None:
        """On arbitrary text, top_words agrees with a Counter-based reference."""

        @given(
            text=st.lists(st.sampled_from(["a", "B", "ab", "7", "é", " ", "\n", ",", "Zz"]))
            .map("".join)
            .filter(lambda text: len(text) < 400),
            n=st.integers(0, 12),
        )
        def check(text: str, n: int) -> None:
            assert text_tools.call("top_words", {"text": text, "n": n}) == (
                reference_top_words(text, n)
            )

        check()


# Pieces of JSON, so that generated inputs get past the first byte more often than random bytes do.
JSON_FRAGMENTS = (
    *rb'{ } [ ] "text" "n" : , " \u d83d \ 1 - e null'.split(),
    b"\xc3\xa9",
    b"\xed\xa0\x80",
    b" ",
)


class TestBadInput:
    @pytest.mark.parametrize("function", ["word_count", "slugify", "top_words"])
    @pytest.mark.parametrize(
        ("payload", "message", "details"),
        [
            ([1, 2], "must be a JSON object, got array", {"expected": "object", "got": "array"}),
            ("text", "must be a JSON object, got string", {"got": "string"}),
            (None, "must be a JSON object, got null", {"got": "null"}),
            ({}, "missing required field 'text'", {"field": "text"}),
            ({"text": None}, "missing required field 'text'", {"field": "text"}),
            ({"text": 42}, "field 'text' must be a string, got number", {"field": "text"}),
            ({"text": ["a"]}, "field 'text' must be a string, got array", {"got": "array"}),
        ],
    )
    def test_shape_errors(
        self,
        text_tools: Sandbox,
        function: str,
        payload: Any,
        message: str,
        details: dict[str, str],
    ) -> None:
        """A wrong shape is a guest error whose message and details name the problem."""
        with pytest.raises(ExecutionError) as caught:
            text_tools.call(function, payload)
        error = caught.value
        assert error.trap == "guest_error"
        assert message in error.message and message in error.details["message"]
        assert details.items() <= error.details["details"].items()

    @pytest.mark.parametrize(
        ("function", "payload", "field"),
        [
            ("slugify", {"text": "a", "separator": 1}, "separator"),
            ("slugify", {"text": "a", "separator": ["-"]}, "separator"),
            ("top_words", {"text": "a", "n": -1}, "n"),
            ("top_words", {"text": "a", "n": 2.5}, "n"),
            ("top_words", {"text": "a", "n": "3"}, "n"),
            ("top_words", {"text": "a", "n": True}, "n"),
        ],
    )
    def test_optional_field_errors(
        self, text_tools: Sandbox, function: str, payload: Any, field: str
    ) -> None:
        """A mistyped optional field is a guest error naming that field."""
        with pytest.raises(ExecutionError) as caught:
            text_tools.call(function, payload)
        assert caught.value.trap == "guest_error"
        assert caught.value.details["details"]["field"] == field
        assert f"field '{field}'" in caught.value.message

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            (b"", "unexpected end of input"),
            (b'{"text":"abc', "unterminated string"),
            (b'{"text":"a\\x"}', "invalid escape"),
            (b'{"text":"\\u12G4"}', "invalid \\u escape"),
            (b'{"text":"\xff"}', "invalid UTF-8"),
            (b'{"text":"\xc3"}', "invalid UTF-8"),
            (b'{"text":"a\x01"}', "control character in string"),
            (b'{"text":"a"} trailing', "unexpected data after the JSON value"),
            (b'{"text" "a"}', "expected ':'"),
            (b'{"n": 01}', "expected ',' or '}'"),
            (b'{"x": tru}', "invalid literal"),
            (b"[" * 100 + b"]" * 100, "nesting deeper than 64 levels"),
        ],
    )
    def test_invalid_json(self, text_tools: Sandbox, raw: bytes, reason: str) -> None:
        """Bytes that are not JSON are a guest error with the reason and the byte offset."""
        with pytest.raises(ExecutionError) as caught:
            text_tools.call_bytes("word_count", raw)
        error = caught.value
        assert error.trap == "guest_error"
        assert error.details["details"]["reason"] == reason
        assert 0 <= error.details["details"]["offset"] <= len(raw)
        assert error.message.startswith("Guest reported an error: input is not valid JSON")

    def test_errors_keep_the_instance(self, text_tools: Sandbox) -> None:
        """A refused input is not a trap: the same instance answers the next call."""
        state = text_tools._state()
        for _ in range(50):
            with pytest.raises(ExecutionError):
                text_tools.call("slugify", {"text": 1})
        assert text_tools._state() is state
        assert text_tools.call("slugify", {"text": "Still Here"}) == "still-here"

    def test_arbitrary_bytes_never_trap(self, text_tools: Sandbox) -> None:
        """Whatever the bytes, the result is JSON or a guest error, never a trap."""
        fragments = st.sampled_from(JSON_FRAGMENTS)
        raw_inputs = st.binary(max_size=64) | st.lists(fragments, max_size=30).map(b"".join)

        @given(raw=raw_inputs, function=st.sampled_from(["word_count", "slugify", "top_words"]))
        def check(raw: bytes, function: str) -> None:
            try:
                output = text_tools.call_bytes(function, raw)
            except ExecutionError as error:
                assert error.trap == "guest_error", error.message
            else:
                json.loads(output)

        check()


# Mostly ASCII, with some two-byte characters and newlines, so that a million characters still
# encode below the manifest's 1 MiB input limit.
_LINE = (
    "The quick brown fox jumps over the lazy dog; Lorem ipsum dolor sit amet, consectetur "
    "adipiscing elit, sed do café.\n"
)
MILLION = (_LINE * (1_000_000 // len(_LINE) + 1))[:1_000_000]


class TestLargeInput:
    def test_million_characters(self, text_tools: Sandbox) -> None:
        """A million-character text goes through all three functions under the manifest limits."""
        assert text_tools.limits.max_input == MiB and text_tools.limits.memory == 16 * MiB
        payload = {"text": MILLION}
        assert text_tools.call("word_count", payload) == reference_word_count(MILLION)
        assert text_tools.call("slugify", payload) == reference_slugify(MILLION)
        assert text_tools.call("top_words", {**payload, "n": 5}) == reference_top_words(MILLION, 5)

    def test_many_distinct_words(self, text_tools: Sandbox) -> None:
        """A near-limit text of distinct words (the largest word table) fits in the memory limit."""
        text = " ".join(f"w{i}" for i in range(140_000))
        assert text_tools.call("top_words", {"text": text, "n": 3}) == [
            {"word": word, "count": 1} for word in ("w0", "w1", "w10")
        ]
        assert memory_size(text_tools) <= 16 * MiB

    def test_output_that_cannot_fit_is_a_memory_error(self, text_tools: Sandbox) -> None:
        """A slug larger than the memory limit allows is a memory error, and the plugin recovers."""
        with pytest.raises(ResourceLimitExceeded) as caught:
            text_tools.call("slugify", {"text": "a " * 400_000, "separator": "-" * 100})
        assert (caught.value.resource, caught.value.limit) == ("memory", 16 * MiB)
        assert text_tools.call("slugify", {"text": "after that"}) == "after-that"


class TestMemoryReuse:
    def test_many_calls_do_not_grow_memory(self, text_tools: Sandbox) -> None:
        """Thousands of calls of varying sizes settle at a fixed memory size: nothing leaks."""

        def round_of_calls(i: int) -> None:
            text = "Word soup, éclair; " * (i % 40) + str(i)
            text_tools.call("word_count", {"text": text})
            text_tools.call("slugify", {"text": text, "separator": "_"})
            text_tools.call("top_words", {"text": text, "n": i % 5})
            with pytest.raises(ExecutionError):
                text_tools.call("top_words", {"text": text, "n": -1})

        for i in range(100):
            round_of_calls(i)
        settled = memory_size(text_tools)
        for i in range(100, 1100):
            round_of_calls(i)
        assert memory_size(text_tools) == settled
        assert settled <= 4 * MiB

    def test_large_inputs_reuse_their_blocks(self, text_tools: Sandbox) -> None:
        """Repeating a large call reuses the blocks of the first one instead of growing again."""
        text = " ".join(f"w{i % 9000}" for i in range(60_000))
        for function in ("word_count", "slugify", "top_words"):
            text_tools.call(function, {"text": text})
        settled = memory_size(text_tools)
        for _ in range(5):
            for function in ("word_count", "slugify", "top_words"):
                text_tools.call(function, {"text": text})
        assert memory_size(text_tools) == settled


class TestTextToolsModule:
    def test_manifest_matches_module(self, engine: Engine) -> None:
        """The committed module exports every manifest function and imports only `error`."""
        manifest = read_manifest(TEXT_TOOLS / "plugin.toml")
        assert manifest["module"]["resource"] == "text_tools.wasm"
        sandbox = load(TEXT_TOOLS / "plugin.toml", engine)
        assert set(sandbox.functions) == {"word_count", "slugify", "top_words"}
        imports = {(item.module, item.name) for item in sandbox.module.imports}
        assert imports == {("wasm_plugins", "error")}
        exports = {item.name: item for item in sandbox.module.exports}
        assert all(exports[name].signature == PLUGIN_FUNCTION for name in sandbox.functions)
        assert memory_size(sandbox) <= MiB, "the initial memory stays small"

    def test_source_is_shipped(self) -> None:
        """The C source sits next to the module it builds, and uses only the ABI header."""
        source = (TEXT_TOOLS / "text_tools.c").read_text()
        assert re.findall(r"#include\s+[<\"]([^>\"]+)", source) == ["wasm_plugins.h"]


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plugins_build", PLUGINS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the defining module up in sys.modules while the script runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _compiler() -> list[str]:
    """The C-to-wasm compiler, or a skip when this environment has none."""
    if os.environ.get("WASM_PLUGINS_CC"):
        return shlex.split(os.environ["WASM_PLUGINS_CC"])
    if importlib.util.find_spec("ziglang") is None:
        pytest.skip("no C-to-wasm compiler: pip install ziglang==0.17.1 or set WASM_PLUGINS_CC")
    return [sys.executable, "-m", "ziglang", "cc"]


class TestBuild:
    def test_committed_module_is_current(self) -> None:
        """Building text_tools.c gives exactly the committed text_tools.wasm."""
        build = _build_script()
        (target,) = build.discover([PLUGINS / "text-tools"])
        assert target.output == TEXT_TOOLS / "text_tools.wasm"
        assert build.compile_module(_compiler(), target) == target.output.read_bytes()

    @pytest.mark.parametrize("language", [["-x", "c", "-std=c99"], ["-x", "c++", "-std=c++11"]])
    def test_header_declares_the_abi(self, tmp_path: Path, language: list[str]) -> None:
        """wasm_plugins.h compiles as C99 and C++ and imports every host function with its type."""
        source = tmp_path / "all.c"
        source.write_text(
            "#include <wasm_plugins.h>\n"
            "static unsigned char b[64];\n"
            "WP_EXPORT(wp_alloc) void *wp_alloc(uint32_t n) { (void)n; return b; }\n"
            "WP_EXPORT(wp_free) void wp_free(void *p, uint32_t n) { (void)p; (void)n; }\n"
            "WP_EXPORT(all) uint64_t all(uint8_t *p, uint32_t n) {\n"
            "  wp_error(p, n); wp_log(WP_LOG_INFO, p, n);\n"
            "  uint32_t r = (uint32_t)wp_config_get(p, n, b, 8);\n"
            "  r += (uint32_t)wp_kv_get(p, n, b, 8);\n"
            "  r += (uint32_t)wp_kv_set(p, n, p, n) + (uint32_t)wp_kv_delete(p, n);\n"
            "  r += (uint32_t)wp_random_fill(b, 4);\n"
            "  r += (uint32_t)(wp_clock_now() ^ wp_clock_monotonic());\n"
            "  return wp_result(b, r);\n"
            "}\n"
        )
        output = tmp_path / "all.wasm"
        command = [
            *_compiler(),
            *language,
            "--target=wasm32-freestanding",
            "-O2",
            "-nostdlib",
            "-Wall",
            "-Wextra",
            "-pedantic",
            "-Werror",
            f"-I{HOSTAPI}",
            "-Wl,--no-entry",
            "-o",
            str(output),
            str(source),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        exports, imports = _build_script().module_interface(output.read_bytes())
        assert {name: signature for _, name, signature in imports} == {
            "error": (("i32", "i32"), ()),
            "log": (("i32", "i32", "i32"), ()),
            "config_get": (("i32",) * 4, ("i32",)),
            "kv_get": (("i32",) * 4, ("i32",)),
            "kv_set": (("i32",) * 4, ("i32",)),
            "kv_delete": (("i32", "i32"), ("i32",)),
            "clock_now": ((), ("i64",)),
            "clock_monotonic": ((), ("i64",)),
            "random_fill": (("i32", "i32"), ("i32",)),
        }
        assert {module for module, _, _ in imports} == {"wasm_plugins"}
        assert exports["all"] == (("i32", "i32"), ("i64",))
        assert exports["memory"] == "memory"


# -- the hostile pack ------------------------------------------------------------------------------


def hostile(name: str) -> Path:
    return HOSTILE / f"{name}.toml"


class TestHostileManifests:
    @pytest.fixture(params=ALL_ENGINE_NAMES)
    def engine(self, request: pytest.FixtureRequest) -> Engine:
        """Every engine, wasmer-sdk (out of process) included."""
        return engine_named(request.param)

    @pytest.mark.parametrize("name", HOSTILE_PLUGINS)
    def test_module_matches_manifest(self, engine: Engine, name: str) -> None:
        """Each hostile module compiles and exports the ABI and every function of its manifest."""
        manifest = read_manifest(hostile(name))
        assert manifest["name"] == name and manifest["abi"] == 1
        assert manifest["module"]["resource"] == f"{name}.wat"
        module = engine.compile(engine.wat_to_wasm((HOSTILE / f"{name}.wat").read_text()))
        exports = {item.name: item for item in module.exports}
        assert {"memory", "wp_alloc", "wp_free"} <= exports.keys()
        for function in manifest["functions"]:
            assert exports[function].signature == PLUGIN_FUNCTION, function

    def test_capability_thief_asks_for_what_it_is_not_granted(self, engine: Engine) -> None:
        """capability-thief imports kv_get and clock_now while its manifest grants nothing."""
        assert read_manifest(hostile("capability-thief"))["capabilities"] == []
        module = engine.compile(engine.wat_to_wasm((HOSTILE / "capability-thief.wat").read_text()))
        imports = {(item.module, item.name): item.signature for item in module.imports}
        assert imports == {
            ("wasm_plugins", "kv_get"): FuncSignature(("i32",) * 4, ("i32",)),
            ("wasm_plugins", "clock_now"): FuncSignature((), ("i64",)),
        }

    def test_wasi_escape_declares_a_read_only_preopen(self, engine: Engine) -> None:
        """wasi-escape is granted wasi with one read-only preopen and imports only WASI calls."""
        manifest = read_manifest(hostile("wasi-escape"))
        assert manifest["capabilities"] == ["wasi"]
        assert manifest["wasi"]["preopens"] == [
            {"host": "sandbox-dir", "guest": "/data", "read_only": True}
        ]
        module = engine.compile(engine.wat_to_wasm((HOSTILE / "wasi-escape.wat").read_text()))
        imports = {(item.module, item.name): item.signature for item in module.imports}
        assert imports[("wasi_snapshot_preview1", "path_open")] == FuncSignature(
            ("i32", "i32", "i32", "i32", "i32", "i64", "i64", "i32", "i32"), ("i32",)
        )
        assert {module for module, _ in imports} == {"wasi_snapshot_preview1"}
        assert {name for _, name in imports} == {"path_open", "fd_read", "fd_close", "fd_write"}


class TestEndlessLoop:
    def test_timeout_stops_it(self, wasmtime_engine: Engine) -> None:
        """The manifest's 200 ms timeout stops `spin` with a timeout error (how soon after the
        deadline is measured in benchmarks/run.py)."""
        sandbox = load(hostile("endless-loop"), wasmtime_engine)
        assert sandbox.limits.timeout == pytest.approx(0.2)
        with pytest.raises(DeadlineExceeded) as caught:
            sandbox.call("spin")
        error = caught.value
        assert error.limit == pytest.approx(0.2)
        assert error.duration is not None and error.duration >= 0.2
        assert (error.plugin, error.function) == ("endless-loop", "spin")

    def test_timeout_can_be_tightened(self, wasmtime_engine: Engine) -> None:
        """A host may give a shorter timeout than the manifest's; the loop stops just the same."""
        sandbox = load(hostile("endless-loop"), wasmtime_engine, timeout="50 ms")
        for _ in range(2):
            with pytest.raises(DeadlineExceeded) as caught:
                sandbox.call("spin")
            assert caught.value.limit == pytest.approx(0.05)


class TestMemoryBomb:
    @pytest.fixture(params=ALL_ENGINE_NAMES)
    def engine(self, request: pytest.FixtureRequest) -> Engine:
        """Every engine, wasmer-sdk (out of process) included."""
        return engine_named(request.param)

    def test_growth_stops_at_the_limit(self, engine: Engine) -> None:
        """Growing past 8 MiB is a memory limit error with the size asked for, not a bare trap."""
        sandbox = load(hostile("memory-bomb"), engine)
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call("explode")
        error = caught.value
        assert (error.resource, error.limit) == ("memory", 8 * MiB)
        assert error.used is not None and 8 * MiB < error.used <= 9 * MiB
        assert isinstance(error.__cause__, ExecutionError)

    def test_next_call_gets_a_fresh_instance(self, engine: Engine) -> None:
        """After the bomb, the next call starts from one page again and fails the same way."""
        sandbox = load(hostile("memory-bomb"), engine)
        for _ in range(2):
            with pytest.raises(ResourceLimitExceeded):
                sandbox.call("explode")
        assert memory_size(sandbox) == 65536


class TestTrapper:
    @pytest.fixture(params=ALL_ENGINE_NAMES)
    def engine(self, request: pytest.FixtureRequest) -> Engine:
        """Every engine, wasmer-sdk (out of process) included."""
        return engine_named(request.param)

    @pytest.mark.parametrize(
        ("function", "trap", "innermost"),
        [
            ("unreachable", "unreachable", "unreachable"),
            ("divide_by_zero", "integer_divide_by_zero", "divide_by_zero"),
            ("out_of_bounds", "memory_out_of_bounds", "out_of_bounds"),
            ("stack_overflow", "stack_overflow", "recurse"),
        ],
    )
    def test_each_trap_is_typed(
        self, engine: Engine, function: str, trap: str, innermost: str
    ) -> None:
        """Every trap is a runtime error with its canonical name and a few named guest frames."""
        sandbox = load(hostile("trapper"), engine)
        with pytest.raises(ExecutionError) as caught:
            sandbox.call(function)
        error = caught.value
        assert error.trap == trap
        assert 1 <= len(error.guest_stack) <= 32
        assert error.guest_stack[0].function == innermost
        assert (error.plugin, error.function) == ("trapper", function)


class TestBadOutput:
    @pytest.fixture(params=ALL_ENGINE_NAMES)
    def engine(self, request: pytest.FixtureRequest) -> Engine:
        """Every engine, wasmer-sdk (out of process) included."""
        return engine_named(request.param)

    def test_not_json(self, engine: Engine) -> None:
        """Output the JSON codec refuses is a communication error quoting it."""
        sandbox = load(hostile("bad-output"), engine)
        with pytest.raises(CommunicationError) as caught:
            sandbox.call("not_json")
        assert caught.value.channel == "guest-output"
        assert "<html>this is not JSON" in caught.value.message

    def test_pointer_out_of_bounds(self, engine: Engine) -> None:
        """A result outside guest memory is a communication error naming the range."""
        sandbox = load(hostile("bad-output"), engine)
        with pytest.raises(CommunicationError) as caught:
            sandbox.call("pointer_out_of_bounds")
        assert caught.value.direction == "guest-to-host"
        assert str(0xFFFF0000) in caught.value.message

    def test_huge_length(self, engine: Engine) -> None:
        """A 4 GiB result is refused by the output limit before anything is read."""
        sandbox = load(hostile("bad-output"), engine, max_output="1 MiB")
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call("huge_length")
        error = caught.value
        assert (error.resource, error.used, error.limit) == ("output", 0xFFFFFFFF, MiB)
