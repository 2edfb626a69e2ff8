"""Payload codecs: JSON (UTF-8, the default) and raw bytes."""

from __future__ import annotations

import json
import json.encoder
from typing import Any, Protocol

from wasm_plugins.errors import CommunicationError, ConfigurationError

__all__ = ["Codec", "JsonCodec", "RawCodec", "get_codec"]


class Codec(Protocol):
    """Turns call inputs into bytes for the guest, and the guest's bytes into results."""

    name: str

    def encode(self, value: Any) -> bytes:
        """:raises CommunicationError: when the value cannot be encoded."""

    def decode(self, data: bytes) -> Any:
        """:raises CommunicationError: when the guest's bytes are not valid for the codec."""


class JsonCodec:
    """Compact JSON in UTF-8; NaN and infinities are refused both ways (they are not JSON)."""

    name = "json"

    def __init__(self) -> None:
        # Built once: json.dumps and json.loads make a new encoder or decoder for every call that
        # passes options, which costs more than the guest call itself.
        self._encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        self._decoder = json.JSONDecoder(parse_constant=_refuse_constant)
        self._scan: Any = getattr(self._decoder, "scan_once")  # noqa: B009 - not in the stubs
        # JSONEncoder.encode makes a new C encoder on every call (with a new dict of the objects
        # being encoded, to detect cycles): this one is made once, without that dict, so that
        # threads can share it. Any failure is encoded again by the full encoder, which raises
        # exactly what it always raised (a cycle is then reported as a cycle, not as the
        # recursion error it causes here).
        make: Any = getattr(json.encoder, "c_make_encoder", None)
        self._fast_encode: Any = (
            None
            if make is None
            else make(
                None,
                self._encoder.default,
                json.encoder.encode_basestring,
                None,
                ":",
                ",",
                False,
                False,
                False,
            )
        )

    def encode(self, value: Any) -> bytes:
        fast = self._fast_encode
        if fast is not None:
            try:
                chunks = fast(value, 0)
            except Exception:
                pass
            else:
                text = chunks[0] if len(chunks) == 1 else "".join(chunks)
                return _utf8(text)
        try:
            text = self._encoder.encode(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise CommunicationError(
                message=f"Input is not JSON-serialisable: {exc}",
                channel="input",
                direction="host-to-guest",
                suggestion="pass JSON values (dict, list, str, int, float, bool, None)",
            ) from None
        return _utf8(text)

    def decode(self, data: bytes) -> Any:
        try:
            text = data.decode("utf-8")
            # The scanner straight away when the text starts with a value: what
            # JSONDecoder.decode does, less two regular-expression matches. Anything else
            # (leading or trailing whitespace, extra data, an error) goes through the full
            # decoder, which gives the same value or raises the same error as ever.
            if text and text[0] not in _WHITESPACE:
                try:
                    value, end = self._scan(text, 0)
                except StopIteration:
                    pass
                else:
                    if end == len(text):
                        return value
            return self._decoder.decode(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            preview = data[:80].decode("utf-8", "replace")
            raise CommunicationError(
                message=f"Guest output is not valid JSON ({exc}); it starts with {preview!r}",
                channel="guest-output",
                direction="guest-to-host",
                suggestion="the plugin must return UTF-8 JSON, or be declared with codec 'raw'",
            ) from None


_WHITESPACE = frozenset(" \t\n\r")


def _utf8(text: str) -> bytes:
    """The text as UTF-8; a lone surrogate (which UTF-8 cannot hold) is the caller's error, found
    before the guest runs rather than handed to it as invalid bytes."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CommunicationError(
            message=(
                f"Input is not valid Unicode: a lone surrogate {text[exc.start]!r} at "
                f"character {exc.start} of the JSON text cannot be encoded as UTF-8"
            ),
            channel="input",
            direction="host-to-guest",
            suggestion="pass well-formed strings (decode bytes with errors='replace' if unsure)",
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class RawCodec:
    """Bytes in, bytes out."""

    name = "raw"

    def encode(self, value: Any) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise CommunicationError(
            message=f"Input for the raw codec must be bytes, not {type(value).__name__}",
            channel="input",
            direction="host-to-guest",
            suggestion="pass bytes, or use the json codec",
        )

    def decode(self, data: bytes) -> Any:
        return data


_CODECS: dict[str, Codec] = {"json": JsonCodec(), "raw": RawCodec()}


def get_codec(name: str) -> Codec:
    """The codec called ``name``.

    :raises ConfigurationError: for an unknown name.
    """
    codec = _CODECS.get(name)
    if codec is None:
        raise ConfigurationError(
            field="codec",
            message=f"Invalid configuration: codec - unknown codec {name!r}",
            suggestion="use 'json' or 'raw'",
        )
    return codec
