"""Embedded log: produce → consume latency with a tailing consumer in another process.

This process appends single records (``Producer.send``, acknowledged after the
write; ``--fsync`` sets the durability policy) at ``--rate`` records/s for
``--seconds``. Each record's value is the ``CLOCK_MONOTONIC`` time (ns) just
before ``send`` was called; the clock is system-wide on Linux, so another
process can compare it. A consumer in a separate process tails the topic
(``Consumer.poll_batch(timeout=...)``, which checks the partition's
memory-mapped head every 0.2 ms) and records, for each record, the time it
came out of ``poll_batch`` minus the value. Sends are scheduled at fixed
times (``start + i / rate``) and the value is the scheduled time, so a
producer that falls behind counts against the latency (no coordinated
omission). The first second is a warm-up and not counted.

    .venv/bin/python bench/log_latency.py                 # 2000 records/s for 10 s
    .venv/bin/python bench/log_latency.py --fsync always --rate 500
    .venv/bin/python bench/log_latency.py --quick

Target: p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

from common import print_header, print_table
from sluice.log import Log

CONSUMER = """
import sys, time
import numpy as np
from sluice.log import Log

data_dir, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = Log(data_dir).consumer("lat", from_="earliest")
lat = []
print("ready", flush=True)
deadline = time.monotonic() + 120
while len(lat) < n and time.monotonic() < deadline:
    df = c.poll_batch(timeout=0.5)
    now = time.monotonic_ns()
    if df.height:
        sent = np.frombuffer(b"".join(df["value"].to_list()), dtype="<i8")
        lat.extend((now - sent).tolist())
np.save(out, np.array(lat, dtype=np.int64))
"""


def run(rate: int, seconds: float, fsync: str, root: str) -> tuple[np.ndarray, float]:
    d = tempfile.mkdtemp(dir=root)
    log = Log(d)
    log.create_topic("lat", retention=None)
    n = int(rate * seconds)
    out = os.path.join(d, "lat.npy")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CONSUMER), d, str(n), out],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    pack = struct.Struct("<q").pack
    with log.producer(fsync=fsync) as p:  # type: ignore[arg-type]
        start = time.monotonic_ns() + 10_000_000
        step = 1e9 / rate
        t0 = time.perf_counter()
        for i in range(n):
            due = start + int(i * step)
            while (now := time.monotonic_ns()) < due:
                if due - now > 200_000:
                    time.sleep((due - now - 100_000) / 1e9)
            p.send("lat", pack(due), partition=0)
        achieved = n / (time.perf_counter() - t0)
    proc.wait(120)
    lat = np.load(out)
    log.close()
    shutil.rmtree(d)
    warm = int(rate)  # the first second
    return lat[warm:] / 1e6, achieved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=2000, help="records per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fsync", default=None, help="always, interval or never (default: all three)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="3 s per policy")
    args = ap.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    root = tempfile.mkdtemp(prefix="sluice-bench-lat-", dir=args.dir)
    print_header("embedded log: produce -> consume latency (tailing consumer in another process)")
    print(f"   load average        {os.getloadavg()[0]:.2f}")
    print(
        f"   rate                {args.rate} records/s for {seconds:g} s (first second not counted)\n"
    )
    rows = []
    try:
        for fsync in [args.fsync] if args.fsync else ["never", "interval", "always"]:
            lat, achieved = run(args.rate, seconds, fsync, root)
            q = np.percentile(lat, [50, 90, 99, 99.9]) if len(lat) else [float("nan")] * 4
            rows.append(
                [f"fsync={fsync}", len(lat), achieved, *(float(x) for x in q), float(lat.max())]
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(
        ["policy", "records", "sent/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"], rows
    )
    print(f"\n   load average after  {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
