"""The trust policy: a manifest is a request, the host's policy decides what a plugin gets."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from wasm_plugins import Manifest, SecurityViolation
from wasm_plugins._units import GiB, MiB
from wasm_plugins.errors import ConfigurationError
from wasm_plugins.trust import DEFAULT_GRANT, Grant, GrantedDirectory, TrustPolicy

WAT = "(module)"
DIGEST = hashlib.sha256(WAT.encode()).hexdigest()


def manifest(**fields: Any) -> Manifest:
    data: dict[str, Any] = {"name": "greedy", "module": {"wat": WAT}}
    data.update(fields)
    return Manifest.from_dict(data)


class TestDefaultPolicy:
    """TrustPolicy(): log only, nothing else, memory, input and output capped."""

    def test_log_alone_is_granted(self) -> None:
        """A manifest asking for log only runs as written, with the default caps filled in."""
        granted = TrustPolicy().apply(manifest(capabilities=["log"]))
        assert granted.capabilities == {"log"}
        assert granted.limits.memory == 64 * MiB
        assert granted.limits.max_input == granted.limits.max_output == 16 * MiB
        assert granted.limits.fuel is None and granted.limits.timeout is None

    @pytest.mark.parametrize("capability", ["kv", "config", "clock", "random", "wasi", "http"])
    def test_any_other_capability_is_refused(self, capability: str) -> None:
        """Every capability but log is asking for more: refused, naming the capability and the
        policy entry that would grant it."""
        with pytest.raises(SecurityViolation) as caught:
            TrustPolicy().apply(manifest(capabilities=["log", capability]))
        error = caught.value
        assert error.violation_type == "not_granted"
        assert error.capability == capability
        assert error.plugin == "greedy"
        assert '[plugins."greedy"]' in (error.suggestion or "")
        assert f'"{capability}"' in (error.suggestion or "")

    def test_memory_above_the_cap_is_refused(self) -> None:
        """1 GiB of memory, and a 4 GiB recovery ceiling, are both above the 64 MiB cap."""
        review = TrustPolicy().review(
            manifest(limits={"memory": "1 GiB"}, policy={"max_memory": "4 GiB"})
        )
        assert not review.allowed
        assert {e.field for e in review.excess} == {"limits.memory", "policy.max_memory"}

    def test_no_directory_variable_or_host(self) -> None:
        """A preopen, an environment variable or an http host is outside the default grant."""
        review = TrustPolicy().review(
            manifest(
                wasi={
                    "preopens": [{"host": "/", "guest": "/", "read_only": True}],
                    "env": ["HOME"],
                },
                http=["example.com"],
            )
        )
        assert {e.field for e in review.excess} == {"wasi.preopens", "wasi.env", "http"}
        assert review.granted.wasi.preopens == () and review.granted.wasi.env == ()
        assert review.granted.http == ()

    def test_no_fuel_or_timeout_of_its_own(self) -> None:
        """The default policy leaves fuel and timeout to the manifest."""
        granted = TrustPolicy().apply(manifest(limits={"fuel": 5, "timeout": "1 s"}))
        assert (granted.limits.fuel, granted.limits.timeout) == (5, 1.0)


class TestClamp:
    """mode = "clamp": the plugin runs with its grant only."""

    def test_clamped_to_the_grant(self) -> None:
        """Capabilities are intersected, limits capped, read-write directories made read-only,
        directories and variables outside the grant dropped."""
        policy = TrustPolicy(
            Grant(
                capabilities=frozenset({"log", "wasi"}),
                preopens=(GrantedDirectory("/srv/data", "/data", read_only=True),),
                env=frozenset({"LANG"}),
            ),
            mode="clamp",
        )
        requested = manifest(
            capabilities=["log", "kv", "wasi"],
            limits={"memory": "1 GiB"},
            wasi={
                "preopens": [
                    {"host": "/srv/data/in", "guest": "/data", "read_only": False},
                    {"host": "/", "guest": "/root", "read_only": False},
                ],
                "env": ["LANG", "AWS_SECRET_ACCESS_KEY"],
            },
        )
        review = policy.review(requested)
        assert review.allowed and review.excess
        granted = review.granted
        assert granted.capabilities == {"log", "wasi"}
        assert granted.limits.memory == 64 * MiB
        assert [(p.host, p.guest, p.read_only) for p in granted.wasi.preopens] == [
            ("/srv/data/in", "/data", True)
        ]
        assert granted.wasi.env == ("LANG",)

    def test_a_pin_is_never_clamped(self) -> None:
        """A module that is not the pinned one is refused in clamp mode too."""
        policy = TrustPolicy(Grant(sha256="0" * 64), mode="clamp")
        with pytest.raises(SecurityViolation) as caught:
            policy.apply(manifest())
        assert caught.value.violation_type == "module_not_pinned"
        assert DIGEST in caught.value.message


class TestPolicyFile:
    """The TOML file: the documented shape, entries per plugin over distribution over default."""

    CANONICAL = f"""
mode = "refuse"
[default]
capabilities = ["log"]
limits = {{ memory = "64 MiB", timeout = "5 s", fuel = 1_000_000_000 }}
[plugins."text-tools"]
capabilities = ["log", "kv", "wasi"]
preopens = [{{ host = "data", guest = "/data", read_only = true }}]
env = ["LANG"]
http = ["api.example.com"]
sha256 = "{DIGEST}"
mode = "clamp"
[distributions."wasm-plugins-hostile-pack"]
isolation = "process"
"""

    def test_the_canonical_shape(self, tmp_path: Path) -> None:
        """Every key of the documented example is read; relative host paths resolve against
        the policy file's folder."""
        path = tmp_path / "trust.toml"
        path.write_text(self.CANONICAL)
        policy = TrustPolicy.from_file(path)
        entry = policy.grant_for("text-tools")
        assert entry.capabilities == {"log", "kv", "wasi"}
        assert entry.preopens == (GrantedDirectory(str(tmp_path / "data"), "/data", True),)
        assert entry.env == {"LANG"} and entry.http == {"api.example.com"}
        assert entry.sha256 == DIGEST and entry.mode == "clamp"
        assert entry.limits["timeout"] == 5.0 and entry.limits["fuel"] == 1_000_000_000
        other = policy.grant_for("trapper", "wasm_plugins.Hostile_Pack 1.0.0")
        assert other.isolation == "process" and other.capabilities == {"log"}
        assert policy.apply(manifest(name="trapper"), "wasm-plugins-hostile-pack").isolation == (
            "process"
        )

    def test_an_omitted_limit_takes_the_policy_value(self) -> None:
        """timeout and fuel the manifest does not set come from the policy; a smaller one
        the manifest asks for stays."""
        policy = TrustPolicy.from_toml(self.CANONICAL)
        granted = policy.apply(manifest(limits={"timeout": "1 s"}))
        assert granted.limits.timeout == 1.0 and granted.limits.fuel == 1_000_000_000
        with pytest.raises(SecurityViolation):
            policy.apply(manifest(limits={"timeout": "10 s"}))

    @pytest.mark.parametrize(
        ("text", "field"),
        [
            ('[default]\ncapabilitees = ["log"]', "trust.default.capabilitees"),
            ('[plugins.x]\nlimits = { memory = "lots" }', "trust.plugins.x.limits.memory"),
            ("[plugins.x]\nlimits = { fuel = nan }", "trust.plugins.x.limits.fuel"),
            ('[plugins.x]\nlimits = { memorry = "1 MiB" }', "trust.plugins.x.limits.memorry"),
            ('mode = "yolo"', "trust.mode"),
            ('[plugins.x]\nsha256 = "abc"', "trust.plugins.x.sha256"),
            ('[plugins.x]\nisolation = "none"', "trust.plugins.x.isolation"),
            ('[plugins.x]\npreopens = [{ host = "a" }]', "trust.plugins.x.preopens.0"),
            ("[plugins.x]\ncapabilities = [1]", "trust.plugins.x.capabilities"),
        ],
    )
    def test_a_bad_policy_names_its_field(self, text: str, field: str) -> None:
        """A mistake in the policy is a ConfigurationError naming the field, never ignored."""
        with pytest.raises(ConfigurationError) as caught:
            TrustPolicy.from_toml(text)
        assert caught.value.field == field

    def test_from_environment(self, tmp_path: Path) -> None:
        """WASM_PLUGINS_TRUST names the policy file; without it, the default policy."""
        path = tmp_path / "trust.toml"
        path.write_text('[plugins.greedy]\ncapabilities = ["log", "kv"]\n')
        policy = TrustPolicy.from_environment({"WASM_PLUGINS_TRUST": str(path)})
        assert policy.apply(manifest(capabilities=["kv"])).capabilities == {"kv"}
        assert TrustPolicy.from_environment({}).grant_for("greedy") == DEFAULT_GRANT


class TestRefusal:
    """A refusal names exactly what to grant, as policy lines a person can review and add."""

    def test_the_suggested_entry_grants_the_request(self, tmp_path: Path) -> None:
        """The entry printed in the refusal, added to the policy, lets the plugin run as asked."""
        (tmp_path / "root").mkdir()
        requested = manifest(
            capabilities=["log", "kv", "wasi"],
            limits={"memory": "1 GiB", "timeout": "250 ms"},
            policy={"max_memory": "2 GiB"},
            wasi={
                "preopens": [{"host": str(tmp_path / "root"), "guest": "/", "read_only": False}],
                "env": ["LANG"],
            },
            http=["api.example.com"],
        )
        strict = TrustPolicy.from_toml('[default]\nlimits = { timeout = "100 ms" }')
        with pytest.raises(SecurityViolation) as caught:
            strict.apply(requested)
        entry = strict.review(requested).entry()
        assert entry in (caught.value.suggestion or "")
        granting = TrustPolicy.from_toml('[default]\nlimits = { timeout = "100 ms" }\n' + entry)
        granted = granting.apply(requested)
        assert granted.capabilities == requested.capabilities
        assert granted.limits.memory == GiB and granted.limits.timeout == 0.25
        assert granted.policy.max_memory == 2 * GiB
        assert granted.wasi == requested.wasi and granted.http == requested.http

    def test_plugin_strings_are_escaped(self) -> None:
        """A capability name with terminal escapes is shown escaped in the message."""
        with pytest.raises(SecurityViolation) as caught:
            TrustPolicy().apply(manifest(capabilities=["\x1b[2Jevil"]))
        assert "\x1b" not in caught.value.message
        assert "\\x1b[2Jevil" in caught.value.message


class TestGranting:
    """What the CLI's --allow, --preopen and --allow-http add to a policy."""

    def test_granting_adds_to_the_plugin_entry(self, tmp_path: Path) -> None:
        """granting() widens one plugin's entry and leaves the others and the original alone."""
        policy = TrustPolicy()
        wider = policy.granting(
            "greedy",
            capabilities=["kv", "wasi"],
            preopens=[GrantedDirectory(str(tmp_path), "/data", read_only=False)],
            http=["api.example.com"],
        )
        request = manifest(
            capabilities=["log", "kv", "wasi"],
            wasi={"preopens": [{"host": str(tmp_path), "guest": "/data", "read_only": False}]},
            http=["api.example.com"],
        )
        assert wider.apply(request).capabilities == {"log", "kv", "wasi"}
        assert not policy.review(request).allowed
        assert not wider.review(manifest(name="other", capabilities=["kv"])).allowed


class TestReviewShown:
    """What inspect prints: each setting requested next to granted."""

    def test_as_dict(self) -> None:
        """The plain data shows the request and the grant side by side."""
        review = TrustPolicy().review(manifest(capabilities=["kv"], limits={"memory": "1 GiB"}))
        data = review.as_dict()
        assert (data["requested"]["capabilities"], data["granted"]["capabilities"]) == (["kv"], [])
        assert data["requested"]["limits"]["memory"] == "1 GiB"
        assert data["allowed"] is False and data["granted"]["limits"]["memory"] == "64 MiB"
        assert data["entry"].startswith('[plugins."greedy"]')

    @pytest.mark.parametrize(
        ("flag", "read_only"), [("/srv/data", True), ("/srv/data:rw", False), ("/srv/d:ro", True)]
    )
    def test_preopen_flag(self, flag: str, read_only: bool) -> None:
        """--preopen DIR is read-only, DIR:rw read-write, at whatever guest path is asked."""
        from wasm_plugins.trust import parse_preopen_flag

        granted = parse_preopen_flag(flag)
        assert (granted.guest, granted.read_only) == (None, read_only)
        assert granted.host.startswith("/srv/")
