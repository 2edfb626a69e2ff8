"""MkDocs hooks: publish the guest contract under hostapi/ with the documentation pages.

The pages link to ``../hostapi/ABI.md`` so that the links work when the Markdown is read in the
repository; the site copies those files to ``hostapi/`` and points the links there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ("hostapi/ABI.md", "hostapi/wasm_plugins.h")
_OUTSIDE_LINK = re.compile(r"\]\(\.\./(hostapi/[^)\s#]+)")


def on_files(files: Files, config: Any) -> Files:
    for path in PUBLISHED:
        files.append(
            File(
                path,
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth
    return _OUTSIDE_LINK.sub(lambda match: f"]({prefix}{match.group(1)}", markdown)
