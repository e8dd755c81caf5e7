"""``python -m bench NAME [options]``: run one benchmark module of this folder and print its
figures."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def _names() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = _names()
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in names:
        print("usage: python -m bench NAME [options]\n\nbenchmarks: " + ", ".join(names))
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module = importlib.import_module(f"bench.{argv[0]}")
    result: int = module.main(argv[1:])
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
