"""``python -m wasm_plugins.cli``: the ``wasm-plugins`` command."""

import sys

from wasm_plugins.cli import main

if __name__ == "__main__":
    sys.exit(main())
