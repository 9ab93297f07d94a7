"""`make bench`: every benchmark section in one run, printed as tables.

Figures are medians of rounds measured side by side in this one run; the machine is shared and
noisy, so compare ratios from the same run, never absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import time

SECTIONS = {
    "engine": "scripts.bench_engine",
    "plugin": "scripts.bench_plugin",
    "proxy": "scripts.bench_proxy",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"some of {sorted(SECTIONS)}; default: all")
    args = parser.parse_args()
    chosen = args.sections or list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {sorted(unknown)}")
    print(
        f"# tokencache benchmarks — {time.strftime('%Y-%m-%d %H:%M')} — "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}"
    )
    for name in chosen:
        print()
        module = importlib.import_module(SECTIONS[name])
        module.main()


if __name__ == "__main__":
    main()
