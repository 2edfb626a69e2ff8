"""The JSON codec's cached encoder and direct scanner give the same bytes, values and errors as
the standard encoder and decoder."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wasm_plugins import PluginError
from wasm_plugins.sandbox import get_codec

REFERENCE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


REFERENCE_DECODER = json.JSONDecoder(parse_constant=_refuse)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(codec=None)),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def reference_encode(value: Any) -> tuple[str, Any]:
    try:
        return "ok", REFERENCE_ENCODER.encode(value).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError) as exc:
        return "error", f"Input is not JSON-serialisable: {exc}"


def codec_encode(value: Any) -> tuple[str, Any]:
    try:
        return "ok", get_codec("json").encode(value)
    except PluginError as error:
        return "error", error.message


def reference_decode(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", REFERENCE_DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return "error", str(exc)


def codec_decode(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", get_codec("json").decode(data)
    except PluginError as error:
        return "error", error.message


class TestJsonCodec:
    @given(json_values)
    def test_encode_like_the_standard_encoder(self, value: Any) -> None:
        assert codec_encode(value) == reference_encode(value)

    def test_encode_failures(self) -> None:
        circular: list[Any] = []
        circular.append(circular)
        deep: Any = []
        for _ in range(100_000):
            deep = [deep]
        for value in (float("nan"), float("inf"), {1: object()}, object(), circular, deep):
            assert codec_encode(value) == reference_encode(value)
        assert "Circular reference detected" in codec_encode(circular)[1]

    @given(json_values)
    def test_decode_like_the_standard_decoder(self, value: Any) -> None:
        status, encoded = reference_encode(value)
        if status != "ok":
            return
        for data in (encoded, b" " + encoded, encoded + b"\n", encoded + b"x", encoded[:-1]):
            kind, decoded = codec_decode(data)
            reference_kind, reference = reference_decode(data)
            assert kind == reference_kind
            if kind == "ok":
                assert decoded == reference
            else:
                assert str(reference) in decoded

    @given(st.binary(max_size=40))
    def test_decode_any_bytes(self, data: bytes) -> None:
        kind, decoded = codec_decode(data)
        reference_kind, reference = reference_decode(data)
        assert kind == reference_kind
        if kind == "ok":
            assert decoded == reference
        else:
            assert str(reference) in decoded

    @pytest.mark.parametrize(
        "text", ["NaN", "[Infinity]", '{"a": -Infinity}', "", " ", "1 2", '"\\ud800"', "[1,]"]
    )
    def test_decode_edge_cases(self, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        kind, decoded = codec_decode(data)
        reference_kind, reference = reference_decode(data)
        assert kind == reference_kind
        if kind == "ok":
            assert decoded == reference
        else:
            assert str(reference) in decoded
