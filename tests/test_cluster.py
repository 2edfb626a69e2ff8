"""Batches on a real Dask cluster: each worker process builds its own host from the caller's
settings, and typed errors come back typed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_lifecycle import batch_of_inputs, check_batch_results
from wasm_plugins import ContextualError, PluginHost
from wasm_plugins.cli import main

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

# Starting a cluster of worker processes, each building its host, takes tens of seconds.
pytestmark = pytest.mark.slow

from wasm_plugins.cluster import DaskExecutor, HostRecipe  # noqa: E402


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=None,
            silence_logs=True,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_ten_thousand_inputs_on_two_worker_processes(client: Any) -> None:
    inputs = batch_of_inputs()
    seen: list[int] = []
    with PluginHost.discover() as host:
        results = host.map(
            "text-tools",
            "word_count",
            inputs,
            executor=DaskExecutor(client, batch_size=500),
            progress=seen.append,
        )
    check_batch_results(results)
    assert seen[-1] == len(inputs) and seen == sorted(seen)
    # Both worker processes took batches, each with a host of its own.
    hosts = client.run(lambda: len(__import__("wasm_plugins.cluster").cluster._hosts))
    assert len(hosts) == 2 and all(count == 1 for count in hosts.values())


def test_a_plugin_loaded_by_the_host_travels_in_its_recipe(client: Any) -> None:
    wat = """(module
  (memory (export "memory") 1)
  (data (i32.const 1024) "\\"hi\\"")
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 8192))
  (func (export "wp_free") (param i32 i32))
  (func (export "greet") (param i32 i32) (result i64) (i64.const 0x40000000004)))"""
    with PluginHost(engine="wasmtime", module_cache=False) as host:
        host.load({"name": "greeter", "module": {"wat": wat}, "policy": {"max_attempts": 1}})
        recipe = HostRecipe.of(host)
        assert not recipe.discover and set(recipe.sources) == {"greeter"}
        results = host.map("greeter", "greet", range(20), executor=DaskExecutor(client))
        assert [result.value for result in results] == ["hi"] * 20
        missing = host.map("greeter", "absent", [1], executor=DaskExecutor(client))
    [only] = missing
    assert isinstance(only.error, ContextualError)
    assert only.error.error_kind == "module"
    assert only.error.context.plugin == "greeter"


def test_cli_map_on_a_scheduler(
    client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a b"}\n"oops"\n{"text": "c"}\n')
    target = tmp_path / "out.jsonl"
    arguments = ["map", "text-tools", "word_count", "--input-file", str(source)]
    arguments += ["--output-file", str(target), "--scheduler", client.scheduler.address]
    assert main(arguments) == 1
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["value"]["words"] for line in (lines[0], lines[2])] == [2, 1]
    assert lines[1]["error"]["error"]["kind"] == "runtime"
    assert "3 inputs, 2 values, 1 errors" in capsys.readouterr().out
