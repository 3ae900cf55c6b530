"""`python -m broadway` / `broadway`: run the API server."""

from __future__ import annotations

import sys

from broadway.config import Config
from broadway.embedded_store import EmbeddedStoreError
from broadway.server import run


def main(argv: list[str] | None = None) -> int:
    config = Config.from_args(argv)
    try:
        return run(config)
    except EmbeddedStoreError as e:
        print(f"broadway: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"broadway: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
