"""Build every C plugin under plugins/ into the .wasm its manifest names, reproducibly.

A C plugin is a manifest (``*.toml``) whose ``[module] resource`` is a ``.wasm`` file, next to a C
source with the same stem (``text_tools.wasm`` <- ``text_tools.c``). Each is compiled freestanding
(no libc, no WASI) against ``hostapi/wasm_plugins.h``, then checked: it must export ``memory``,
``wp_alloc``, ``wp_free`` and every function of the manifest with the ABI's types, and import only
host functions the manifest's capabilities grant. The .wasm is written next to the source.

    pip install ziglang==0.17.1
    python plugins/build.py                  # build and write every C plugin
    python plugins/build.py --check          # fail when a committed .wasm differs from a build
    python plugins/build.py --cc "zig cc"    # another compiler command (or $WASM_PLUGINS_CC)

The output depends only on the source, the header, the flags and the compiler version: there is no
debug information (which would carry paths), and the module is linked under its final file name
(which wasm-ld records in the name section) inside a private temporary directory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLUGINS = Path(__file__).resolve().parent
ROOT = PLUGINS.parent
HOSTAPI = ROOT / "hostapi"
CC_ENV = "WASM_PLUGINS_CC"
ZIG_HINT = "pip install ziglang==0.17.1"

# The ABI allows bulk memory and sign extension but not every later feature the compiler's default
# CPU may switch on, and older engines (wasmer 1.x) refuse some of those.
FLAGS = (
    "--target=wasm32-freestanding",
    "-mcpu=mvp",
    "-mbulk-memory",
    "-msign-ext",
    "-std=c99",
    "-O2",
    "-g0",
    "-ffreestanding",
    "-nostdlib",
    "-Wall",
    "-Wextra",
    "-Wl,--no-entry",
    "-Wl,-z,stack-size=65536",
)
"""Exports come from WP_EXPORT (export_name) in the source, so no --export flags are needed; a
64 KiB shadow stack keeps the initial memory small (the default is 1 MiB)."""

CAPABILITY_OF_IMPORT = {
    "error": None,
    "log": "log",
    "config_get": "config",
    "kv_get": "kv",
    "kv_set": "kv",
    "kv_delete": "kv",
    "clock_now": "clock",
    "clock_monotonic": "clock",
    "random_fill": "random",
}

PLUGIN_FUNCTION = (("i32", "i32"), ("i64",))
ABI_EXPORTS = {"wp_alloc": (("i32",), ("i32",)), "wp_free": (("i32", "i32"), ())}


class BuildError(Exception):
    """A plugin that cannot be built, or whose module breaks the ABI."""


@dataclass(frozen=True)
class Target:
    """One C plugin: its manifest, source and output."""

    manifest: Path
    source: Path
    output: Path
    functions: tuple[str, ...]
    capabilities: frozenset[str]


# -- manifests ------------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest as a dict (tomllib, tomli, or a reader of the few keys needed here)."""
    text = path.read_text(encoding="utf-8")
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            return _read_manifest_minimal(text)
    return dict(tomllib.loads(text))


def _read_manifest_minimal(text: str) -> dict[str, Any]:
    # Python 3.10 without tomli: the manifest format is fixed, so the keys used here are easy to
    # find line by line.
    manifest: dict[str, Any] = {"module": {}, "functions": {}, "capabilities": []}
    section = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        header = re.fullmatch(r"\[([^\]]+)\]", line)
        if header:
            section = header.group(1).strip()
            if section.startswith("functions."):
                manifest["functions"][section.removeprefix("functions.").strip('"')] = {}
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        if section == "module" and key == "resource":
            manifest["module"]["resource"] = value.strip("\"'")
        elif not section and key == "capabilities":
            manifest["capabilities"] = re.findall(r"[\"']([^\"']+)[\"']", value)
    return manifest


def discover(roots: Sequence[Path]) -> list[Target]:
    """Every C plugin below the given folders, in a stable order."""
    targets = []
    for root in roots:
        for manifest_path in sorted(root.rglob("*.toml")):
            # Copies made by packaging (build/, dist/) and tool folders (.nox, ...) are not sources.
            inside = manifest_path.relative_to(root).parts
            if manifest_path.name == "pyproject.toml" or any(
                part in ("build", "dist") or part.startswith(".") for part in inside
            ):
                continue
            manifest = read_manifest(manifest_path)
            resource = str(manifest.get("module", {}).get("resource", ""))
            if not resource.endswith(".wasm"):
                continue
            output = manifest_path.parent / resource
            source = output.with_suffix(".c")
            if not source.exists():
                continue
            targets.append(
                Target(
                    manifest=manifest_path,
                    source=source,
                    output=output,
                    functions=tuple(manifest.get("functions", {})),
                    capabilities=frozenset(manifest.get("capabilities", ())),
                )
            )
    return targets


# -- compiling ------------------------------------------------------------------------------------


def compiler_command(option: str | None) -> list[str]:
    """The C compiler command: --cc, else $WASM_PLUGINS_CC, else ziglang in this Python."""
    configured = option or os.environ.get(CC_ENV)
    if configured:
        return shlex.split(configured)
    try:
        import ziglang  # noqa: F401  (only probing that the toolchain is installed)
    except ModuleNotFoundError:
        raise BuildError(
            f"no C-to-wasm compiler: run `{ZIG_HINT}`, or pass --cc / set {CC_ENV}"
        ) from None
    return [sys.executable, "-m", "ziglang", "cc"]


def compile_module(cc: Sequence[str], target: Target, *, fresh_cache: bool = False) -> bytes:
    """Compile and link one plugin; the bytes of its module.

    With fresh_cache, zig gets an empty cache of its own, so that a second build really compiles
    again instead of replaying the first.
    """
    with tempfile.TemporaryDirectory(prefix="wasm-plugins-build-") as scratch:
        output = Path(scratch) / target.output.name
        environment = dict(os.environ)
        if fresh_cache:
            cache = str(Path(scratch) / "zig-cache")
            environment.update(ZIG_LOCAL_CACHE_DIR=cache, ZIG_GLOBAL_CACHE_DIR=cache)
        command = [*cc, *FLAGS, f"-I{HOSTAPI}", "-o", str(output), str(target.source)]
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, env=environment
        )
        if result.stdout or result.stderr:
            sys.stderr.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise BuildError(
                f"{target.source.name}: the compiler failed (exit {result.returncode}): "
                + shlex.join(command)
            )
        return output.read_bytes()


# -- checking the module --------------------------------------------------------------------------

_KINDS = ("func", "table", "memory", "global", "tag")
_VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128"}


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise BuildError(f"module truncated at byte {self.pos}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    def name(self) -> str:
        length = self.uleb()
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8")

    def limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 1:
            self.uleb()


def module_interface(wasm: bytes) -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
    """Exports ({name: signature or kind}) and imports ([(module, name, signature or kind)])."""
    if wasm[:8] != b"\0asm\1\0\0\0":
        raise BuildError("not a WebAssembly 1.0 module")
    reader = _Reader(wasm, 8)
    types: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    function_types: list[int] = []
    imports: list[tuple[str, str, Any]] = []
    exports: dict[str, Any] = {}
    while reader.pos < len(wasm):
        section, size = reader.byte(), reader.uleb()
        body = _Reader(wasm, reader.pos, reader.pos + size)
        reader.pos += size
        if section == 1:
            for _ in range(body.uleb()):
                if body.byte() != 0x60:
                    raise BuildError("unexpected type form")
                params = tuple(_VALTYPES.get(body.byte(), "?") for _ in range(body.uleb()))
                results = tuple(_VALTYPES.get(body.byte(), "?") for _ in range(body.uleb()))
                types.append((params, results))
        elif section == 2:
            for _ in range(body.uleb()):
                module, name, kind = body.name(), body.name(), body.byte()
                if kind == 0:
                    index = body.uleb()
                    function_types.append(index)
                    imports.append((module, name, types[index]))
                    continue
                if kind == 1:
                    body.byte()
                    body.limits()
                elif kind == 2:
                    body.limits()
                elif kind == 3:
                    body.byte()
                    body.byte()
                imports.append((module, name, _KINDS[kind]))
        elif section == 3:
            function_types.extend(body.uleb() for _ in range(body.uleb()))
        elif section == 7:
            for _ in range(body.uleb()):
                name, kind, index = body.name(), body.byte(), body.uleb()
                exports[name] = types[function_types[index]] if kind == 0 else _KINDS[kind]
    return exports, imports


def check_module(wasm: bytes, target: Target) -> None:
    """The module validates and has what ABI 1 and the manifest need."""
    try:
        import wasmtime
    except ModuleNotFoundError:
        wasmtime = None
    if wasmtime is not None:
        try:
            wasmtime.Module.validate(wasmtime.Engine(), wasm)
        except Exception as exc:
            raise BuildError(f"{target.output.name} does not validate: {exc}") from None
    exports, imports = module_interface(wasm)
    problems = []
    imports_memory = any(kind == "memory" for _, _, kind in imports)
    if exports.get("memory") != "memory" and not imports_memory:
        problems.append("memory is not exported")
    for name, signature in ABI_EXPORTS.items():
        if exports.get(name) != signature:
            problems.append(f"{name} is missing or has the type {exports.get(name)}")
    for name in target.functions:
        if exports.get(name) != PLUGIN_FUNCTION:
            problems.append(f"plugin function {name} is missing or has type {exports.get(name)}")
    for module, name, _ in imports:
        if module == "env" and name == "memory":
            continue
        if module != "wasm_plugins" or name not in CAPABILITY_OF_IMPORT:
            problems.append(f"unexpected import {module}.{name}")
            continue
        capability = CAPABILITY_OF_IMPORT[name]
        if capability is not None and capability not in target.capabilities:
            problems.append(
                f"imports {module}.{name}, but the manifest does not grant {capability}"
            )
    if problems:
        raise BuildError(f"{target.output.name}: " + "; ".join(problems))


# -- main -----------------------------------------------------------------------------------------


def build(cc: Sequence[str], target: Target, *, check_only: bool) -> bool:
    """Build one plugin; with check_only, compare instead of writing. True when all is well."""
    wasm = compile_module(cc, target)
    if compile_module(cc, target, fresh_cache=True) != wasm:
        raise BuildError(f"{target.source.name}: two builds gave different bytes")
    check_module(wasm, target)
    digest = hashlib.sha256(wasm).hexdigest()[:16]
    where = target.output.relative_to(ROOT) if target.output.is_relative_to(ROOT) else target.output
    if check_only:
        current = target.output.read_bytes() if target.output.exists() else None
        if current != wasm:
            print(f"STALE {where}: rebuild with python plugins/build.py")
            return False
        print(f"ok    {where} ({len(wasm)} bytes, sha256 {digest})")
        return True
    temporary = target.output.with_suffix(".wasm.tmp")
    temporary.write_bytes(wasm)
    temporary.replace(target.output)
    print(f"built {where} ({len(wasm)} bytes, sha256 {digest})")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--cc",
        help=f"C compiler command (default: ${CC_ENV}, else `python -m ziglang cc`)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="build into memory and fail when a committed .wasm differs",
    )
    parser.add_argument(
        "folders",
        nargs="*",
        type=Path,
        help="plugin folders to build (default: every plugin under plugins/)",
    )
    options = parser.parse_args(argv)
    try:
        cc = compiler_command(options.cc)
        if shutil.which(cc[0]) is None and not Path(cc[0]).exists():
            raise BuildError(f"compiler {cc[0]!r} not found")
        targets = discover(options.folders or [PLUGINS])
        if not targets:
            raise BuildError("no C plugin found")
        results = [build(cc, target, check_only=options.check) for target in targets]
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
