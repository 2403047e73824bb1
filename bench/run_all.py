"""Runs every benchmark in turn; each prints its table and writes
bench/results/<name>.json and .png. Not part of the test suite.
Run: .venv/bin/python bench/run_all.py [--quick]   (--quick writes to bench/results/quick/)
The full run takes about an hour (100,000 pages are opened once).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL = [
    ["waiting_browsers.py", "--sizes", "1000,5000,10000"],
    ["push_latency.py", "--sockets", "10000", "--rate", "100", "--seconds", "20"],
    ["push_latency.py", "--sockets", "10000", "--rate", "100", "--seconds", "20", "--notify-to", "other"],
    ["notify_throughput.py"],
    ["timeout_sweep.py", "--orders", "1000"],
    ["hot_sku.py", "--levels", "0,10000,25000,50000", "--seconds", "10"],
    ["keep_alive_spread.py", "--sizes", "20,1000,10000"],
    ["bridge_fanout.py", "--counts", "1,2,4,8"],
    ["scale_out.py", "--pages", "10000", "--stomp", "5000"],
    ["scale_out.py", "--pages", "30000", "--stomp", "10000"],
    ["scale_out.py", "--pages", "100000", "--stomp", "10000", "--restart"],
]
QUICK = [
    ["waiting_browsers.py", "--sizes", "200,1000"],
    ["push_latency.py", "--sockets", "1000", "--rate", "50", "--seconds", "5"],
    ["push_latency.py", "--sockets", "1000", "--rate", "50", "--seconds", "5", "--notify-to", "other"],
    ["notify_throughput.py", "--levels", "1,8,32", "--seconds", "3"],
    ["timeout_sweep.py", "--orders", "200", "--timeout", "10"],
    ["hot_sku.py", "--levels", "0,2000", "--seconds", "3", "--notifies", "200"],
    ["keep_alive_spread.py", "--sizes", "20,1000"],
    ["bridge_fanout.py", "--counts", "1,2", "--pages", "400", "--seconds", "4"],
    ["scale_out.py", "--pages", "2000", "--processes", "2", "--stomp", "200", "--seconds", "4", "--restart"],
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes in all")
    quick = parser.parse_args().quick
    env = {**os.environ, "PAYPUSH_BENCH_RESULTS": str(HERE / "results" / "quick")} if quick else None
    failed = 0
    for script, *args in QUICK if quick else FULL:
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / script), *args], env=env).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
