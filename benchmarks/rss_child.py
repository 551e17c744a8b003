"""``python -m benchmarks.rss_child host|guest ...``: the virtio-sim CLI, reporting its
peak RSS (KiB) into the file named by BENCH_RSS_FILE when it exits."""

from __future__ import annotations

import atexit
import os
import resource
import sys

from virtio_sim.orchestration.cli import main


def _report() -> None:
    path = os.environ.get("BENCH_RSS_FILE")
    if path and len(sys.argv) > 1:
        with open(path, "a") as f:
            f.write(f"{sys.argv[1]} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n")


if __name__ == "__main__":
    atexit.register(_report)
    code = main(sys.argv[1:])
    _report()
    atexit.unregister(_report)
    raise SystemExit(code)
