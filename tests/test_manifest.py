"""Manifests: valid ones structure; every invalid field is a ConfigurationError that names it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wasm_plugins import ConfigurationError, Manifest
from wasm_plugins.manifest import NO_DEFAULT

VALID: dict[str, Any] = {
    "name": "text-tools",
    "version": "1.0.0",
    "description": "Text utilities.",
    "abi": 1,
    "codec": "json",
    "engine": "wasmtime",
    "isolation": "auto",
    "module": {"resource": "text_tools.wasm"},
    "functions": {"word_count": {"description": "Count.", "idempotent": True}},
    "limits": {"memory": "16 MiB", "timeout": "2 s", "fuel": 1000, "max_input": "1 MiB"},
    "capabilities": ["log", "kv"],
    "config": {"greeting": "hello"},
    "wasi": {
        "preopens": [{"host": "data", "guest": "/data", "read_only": True}],
        "env": ["LANG"],
        "capture_output": True,
    },
    "policy": {
        "max_attempts": 3,
        "deadline": "10 s",
        "backoff_base": "50 ms",
        "max_memory": "64 MiB",
        "fallbacks": ["cache", "default"],
        "cache_ttl": "5 min",
        "breaker": {"failure_threshold": 5, "window": "1 min", "recovery_time": "30 s"},
    },
}

not_string = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))
not_bool = st.one_of(st.integers(), st.text(max_size=5), st.none())
not_int = st.one_of(st.text(max_size=5), st.floats(allow_nan=False), st.booleans())
bad_size = st.one_of(
    st.sampled_from(["lots", "16 parsecs", "-1 MiB", "", "MiB"]),
    st.integers(max_value=-1),
    st.booleans(),
)
bad_duration = st.one_of(
    st.sampled_from(["soon", "0 s", "-2 s", "2 fortnights"]),
    st.integers(max_value=0),
    st.booleans(),
)

# (field path, strategy of values that are invalid there)
CASES: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("name", not_string),
    ("name", st.sampled_from(["", "Text Tools", "UPPER", "-leading", "x" * 65, "emoji🙂"])),
    ("version", not_string),
    ("description", not_string),
    ("abi", st.integers().filter(lambda value: value != 1)),
    ("abi", st.text(max_size=3)),
    ("codec", st.text(max_size=8).filter(lambda value: value not in ("json", "raw"))),
    ("engine", not_string),
    ("isolation", st.text(max_size=8).filter(lambda v: v not in ("auto", "in-process", "process"))),
    ("module.resource", not_string),
    ("functions.word_count.idempotent", not_bool),
    ("functions.word_count.description", not_string),
    ("functions.word_count.simplified", not_string),
    ("limits.memory", bad_size),
    ("limits.max_input", bad_size),
    ("limits.max_output", bad_size),
    ("limits.fuel", st.one_of(st.integers(max_value=0), st.text(max_size=4), st.booleans())),
    ("limits.timeout", bad_duration),
    ("limits.module_size", bad_size),
    ("limits.table", st.one_of(st.integers(max_value=0), st.text(max_size=4), st.booleans())),
    ("limits.memories", st.one_of(st.integers(max_value=0), st.text(max_size=4), st.booleans())),
    (
        "capabilities",
        st.one_of(st.text(max_size=5), st.integers(), st.dictionaries(st.text(), st.text())),
    ),
    ("wasi.preopens.0.host", not_string),
    ("wasi.preopens.0.read_only", not_bool),
    ("wasi.capture_output", not_bool),
    ("wasi.env", st.one_of(st.text(max_size=5), st.integers())),
    ("policy.max_attempts", st.one_of(st.integers(max_value=0), not_int)),
    ("policy.breaker.failure_threshold", st.integers(max_value=0)),
    ("policy.breaker.recovery_time", bad_duration),
    ("policy.breaker.window", bad_duration),
    ("policy.breaker.failure_ratio", st.floats(min_value=1.01, max_value=1e6)),
    ("policy.breaker.half_open_probes", st.integers(max_value=0)),
    ("policy.max_memory", bad_size),
    ("policy.max_timeout", bad_duration),
    ("policy.deadline", bad_duration),
    ("policy.backoff_base", bad_duration),
    ("policy.growth", st.floats(max_value=1.0, allow_nan=False)),
    ("policy.fallbacks", st.lists(st.sampled_from(["cached", "retry", "magic"]), min_size=1)),
    ("policy.cache_entries", st.integers(max_value=0)),
]


def with_value(path: str, value: Any) -> dict[str, Any]:
    """A copy of VALID with the field at ``path`` replaced (list indices are numbers)."""
    data = copy.deepcopy(VALID)
    target: Any = data
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[last] = value
    return data


class TestValidManifest:
    def test_every_field(self) -> None:
        """A manifest using every section structures with units converted."""
        manifest = Manifest.from_dict(VALID)
        assert manifest.limits.memory == 16 * 2**20
        assert manifest.limits.timeout == 2.0
        assert manifest.policy.max_memory == 64 * 2**20
        assert (manifest.policy.deadline, manifest.policy.backoff_base) == (10.0, 0.05)
        assert manifest.policy.breaker.window == 60.0
        assert manifest.policy.fallbacks == ("cache", "default")
        assert manifest.capabilities == frozenset({"log", "kv"})
        assert manifest.wasi.preopens[0].guest == "/data"
        assert manifest.functions["word_count"].idempotent is True
        assert manifest.functions["word_count"].default is NO_DEFAULT

    def test_toml(self) -> None:
        """TOML text structures the same way; a default value of any JSON type is kept."""
        manifest = Manifest.from_toml(
            'name = "t"\n[module]\nwat = "(module)"\n[functions.f]\ndefault = [1, "two"]\n'
        )
        assert manifest.functions["f"].default == [1, "two"]
        assert manifest.functions["f"].has_default


class TestInvalidManifest:
    @given(data=st.data())
    def test_invalid_field_is_named(self, data: st.DataObject) -> None:
        """Any invalid value of any field gives a ConfigurationError naming that field's path."""
        path, values = data.draw(st.sampled_from(CASES), label="field")
        value = data.draw(values, label="value")
        with pytest.raises(ConfigurationError) as caught:
            Manifest.from_dict(with_value(path, value))
        field = caught.value.field
        # A value nested inside the field (an out-of-range integer in a list) is named by its
        # own path below the field's.
        assert field == path or (field is not None and field.startswith(path + "."))
        assert path in caught.value.message
        assert caught.value.suggestion

    @given(
        path=st.sampled_from(
            ["", "limits", "functions.word_count", "wasi", "policy", "policy.breaker", "module"]
        ),
        key=st.from_regex(r"[a-z_][a-z0-9_]{0,9}", fullmatch=True),
    )
    def test_unknown_key_is_named(self, path: str, key: str) -> None:
        """An unknown key at any level is refused, naming the key with its path."""
        data = copy.deepcopy(VALID)
        target: Any = data
        for part in filter(None, path.split(".")):
            target = target[part]
        if key in target or key in ("resource", "path", "wat", "wasm"):
            return
        target[key] = 1
        with pytest.raises(ConfigurationError) as caught:
            Manifest.from_dict(data)
        expected = f"{path}.{key}" if path else key
        assert caught.value.field == expected

    @pytest.mark.parametrize(
        ("module", "problem"),
        [({}, "none"), ({"wat": "(module)", "path": "x.wasm"}, "path, wat")],
    )
    def test_module_needs_exactly_one_source(self, module: dict[str, str], problem: str) -> None:
        """[module] takes exactly one source, and says which were given."""
        with pytest.raises(ConfigurationError) as caught:
            Manifest.from_dict({"name": "t", "module": module})
        assert caught.value.field == "module"
        assert problem in caught.value.message

    def test_missing_required(self) -> None:
        """A manifest without a name or a module names what is missing."""
        for missing in ("name", "module"):
            data = {key: value for key, value in VALID.items() if key != missing}
            with pytest.raises(ConfigurationError) as caught:
                Manifest.from_dict(data)
            assert caught.value.field == missing

    def test_bad_toml(self) -> None:
        """TOML that does not parse is a configuration error of the manifest."""
        with pytest.raises(ConfigurationError) as caught:
            Manifest.from_toml("name = \n")
        assert caught.value.field == "manifest"
