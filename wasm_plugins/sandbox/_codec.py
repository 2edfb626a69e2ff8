"""Payload codecs: JSON (UTF-8, the default) and raw bytes."""

from __future__ import annotations

import json
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

    def encode(self, value: Any) -> bytes:
        try:
            text = self._encoder.encode(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise CommunicationError(
                message=f"Input is not JSON-serialisable: {exc}",
                channel="input",
                direction="host-to-guest",
                suggestion="pass JSON values (dict, list, str, int, float, bool, None)",
            ) from None
        return text.encode("utf-8", "surrogatepass")

    def decode(self, data: bytes) -> Any:
        try:
            return self._decoder.decode(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            preview = data[:80].decode("utf-8", "replace")
            raise CommunicationError(
                message=f"Guest output is not valid JSON ({exc}); it starts with {preview!r}",
                channel="guest-output",
                direction="guest-to-host",
                suggestion="the plugin must return UTF-8 JSON, or be declared with codec 'raw'",
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
