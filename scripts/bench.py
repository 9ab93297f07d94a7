"""`make bench`: every benchmark section in one run, printed as tables.

    .venv/bin/python -m scripts.bench [SECTION ...] [-- SECTION-OPTIONS]
    make bench BENCH_ARGS="proxy cluster"            # some sections only
    make bench BENCH_ARGS="cluster -- --keys 3000"   # options for the chosen section(s)

Sections, in order: engine, plugin, proxy, cluster (default: all). On a shared 2-core machine
the proxy section takes about 3 minutes and the cluster section about 12 (most of it warming
30,000 keys on 7 servers; ``-- --keys 3000`` makes it about 4). Options after
``--`` go to each chosen section that takes options (see ``python -m scripts.bench_cluster
--help`` and ``python -m scripts.bench_proxy --help``); the engine section takes none.

Figures are medians of rounds measured side by side in this one run; the machine is shared and
noisy, so compare ratios from the same run, never absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import platform
import sys
import time

SECTIONS = {
    "engine": "scripts.bench_engine",
    "plugin": "scripts.bench_plugin",
    "proxy": "scripts.bench_proxy",
    "cluster": "scripts.bench_cluster",
}


def main() -> None:
    argv = sys.argv[1:]
    forwarded: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, forwarded = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", help=f"some of {list(SECTIONS)}; default: all")
    args = parser.parse_args(argv)
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
        if forwarded and inspect.signature(module.main).parameters:
            module.main(forwarded)
        else:
            module.main()


if __name__ == "__main__":
    main()
