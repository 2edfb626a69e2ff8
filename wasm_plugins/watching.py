"""Reloading plugins whose files change on disk (the ``watch`` extra: ``watchfiles``).

:meth:`PluginHost.watch` starts a :class:`PluginWatcher`: a thread that watches the folders of
every plugin's manifest file and module file, waits until a burst of changes has settled (the
debounce), and reloads each plugin whose files changed with :meth:`PluginHost.reload`: the new
version is compiled, checked and probed before it serves, and when a step fails the old version
keeps serving. The thread suits asyncio hosts as well: a reload never runs on the event loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, final

from wasm_plugins._log import logger
from wasm_plugins.errors import PluginError
from wasm_plugins.manifest import Manifest, PluginSource

__all__ = ["PluginWatcher", "Reloadable"]

ReloadListener = Callable[[str, PluginError | None], None]
"""Told after each reload: the plugin, and the typed error when its new version was refused."""


class _Loaded(Protocol):
    @property
    def manifest(self) -> Manifest:
        """The plugin's manifest."""


class Reloadable(Protocol):
    """What the watcher needs of a host (a :class:`~wasm_plugins.PluginHost`)."""

    @property
    def plugins(self) -> Mapping[str, _Loaded]:
        """The plugins serving, by name."""

    def sources(self) -> dict[str, PluginSource]:
        """By plugin, what it was loaded from."""

    def reload(self, name: str) -> object:
        """Read a plugin's files again and serve the new version once it passed its checks."""


@final
class PluginWatcher:
    """A thread reloading a host's plugins when their files change.

    :param debounce: seconds without a further change before the changes seen are acted on (an
        editor or a build writes a file in several steps).
    :param on_reload: called after each reload, with the error when it failed.
    """

    def __init__(
        self,
        host: Reloadable,
        *,
        debounce: float = 0.3,
        on_reload: ReloadListener | None = None,
    ) -> None:
        self.host = host
        self.debounce = debounce
        self.on_reload = on_reload
        self.ready = threading.Event()
        """Set once the files are watched: a change made after it is seen."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wasm-plugins-watch", daemon=True)

    def start(self) -> PluginWatcher:
        """Start watching (in a daemon thread)."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching and wait for the thread (a reload in progress finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the watching thread runs."""
        return self._thread.is_alive()

    def __enter__(self) -> PluginWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def files(self) -> dict[Path, set[str]]:
        """The files whose change reloads a plugin: manifest files and module files, with the
        plugins they belong to."""
        watched: dict[Path, set[str]] = {}
        for name, source in self.host.sources().items():
            paths = []
            if isinstance(source, str | os.PathLike):
                paths.append(Path(source))
            manifest = self.host.plugins.get(name)
            if manifest is not None:
                module = _module_file(manifest.manifest)
                if module is not None:
                    paths.append(module)
            for path in paths:
                watched.setdefault(path.resolve(), set()).add(name)
        return watched

    def _run(self) -> None:
        import watchfiles  # noqa: PLC0415 - the optional watch extra

        while not self._stop.is_set():
            files = self.files()
            folders = sorted({str(path.parent) for path in files})
            if not folders:
                self.ready.set()
                self._stop.wait(1.0)
                continue

            def relevant(_change: Any, path: str, files: dict[Path, set[str]] = files) -> bool:
                return Path(path).resolve() in files

            changes_seen = watchfiles.watch(
                *folders,
                watch_filter=relevant,
                debounce=int(self.debounce * 1000),
                step=50,
                rust_timeout=200,
                yield_on_timeout=True,
                stop_event=self._stop,
                recursive=False,
            )
            for changes in changes_seen:
                # The first yield, empty, comes once the folders are watched.
                self.ready.set()
                names = {name for _, path in changes for name in files[Path(path).resolve()]}
                for name in sorted(names):
                    self._reload(name)
                if names and self.files() != files:
                    break  # a new version's module lives elsewhere: watch anew

    def _reload(self, name: str) -> None:
        failure: PluginError | None = None
        try:
            self.host.reload(name)
        except PluginError as error:
            failure = error
            logger.bind(plugin=name).warning("reload refused, the old version serves: {}", error)
        if self.on_reload is not None:
            self.on_reload(name, failure)


def _module_file(manifest: Manifest) -> Path | None:
    source = manifest.module_source()
    return source if isinstance(source, Path) else None
