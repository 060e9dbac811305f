"""Embedded log: append and read throughput against the raw write speed of the disk.

In one run, on the same file system (``--dir``, default a temporary directory
next to this script's data directory):

* ``raw disk``: ``dd``-style sequential writes of ``--batch-kb`` chunks into one
  file (``os.write``), with the same fsync policy as the log row below it
  (``never``: no fsync until the end; ``always``: ``fdatasync`` after each chunk);
* ``log append``: the same bytes of record values (100-byte and 1 KiB records)
  appended through ``Producer.send_batch`` in batches of ``--batch-kb``
  (keyless, one partition, no compression), fsync policy as stated. Raw and log
  runs alternate ``--repeat`` times (3), each after an ``os.sync()`` so that
  none pays for the previous one's write-back, and the medians are shown. Records/s
  counts records, MB/s counts value bytes (the log writes a few % more: headers,
  lengths, timestamps). The ratio column is log MB/s / raw MB/s;
* ``log send()``: single-record appends, the slow path, for reference;
* compression: the ratio and append speed of zstd and lz4 on JSON records;
* ``log read``: a ``PartitionReader`` reading everything back (checksums
  verified, decoded to Arrow), from the page cache.

    .venv/bin/python bench/log_append.py            # 512 MB per row
    .venv/bin/python bench/log_append.py --quick    # 64 MB per row

Target: append >= 50% of the raw disk bandwidth for batched writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import polars as pl
import pyarrow as pa

from common import print_header, print_table
from sluice.log import Log
from sluice.log.reader import PartitionReader


def raw_write(path: str, total: int, chunk: int, fsync: str) -> float:
    """Seconds to write ``total`` bytes in ``chunk``-byte writes (dd-style)."""
    buf = np.random.default_rng(1).integers(0, 256, chunk, dtype=np.uint8).tobytes()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0 = time.perf_counter()
    for _ in range(total // chunk):
        os.write(fd, buf)
        if fsync == "always":
            os.fdatasync(fd)
    if fsync != "never":
        os.fdatasync(fd)
    dt = time.perf_counter() - t0
    os.close(fd)
    os.unlink(path)
    return dt


def _values(n: int, size: int, *, json_like: bool = False) -> pa.Array:
    if json_like:
        users = np.random.default_rng(2).integers(0, 1000, n)
        df = pl.DataFrame({"u": users}).select(
            pl.format(
                '{{"user": "user-{}", "kind": "click", "page": "/products/{}", "amount": {}.5, "pad": "{}"}}',
                pl.col("u"),
                pl.col("u") % 50,
                pl.col("u") % 17,
                pl.lit("x" * max(0, size - 100)),
            ).cast(pl.Binary)
        )
        return df.to_series().to_arrow()
    data = np.random.default_rng(3).integers(97, 123, n * size, dtype=np.uint8).tobytes()
    offsets = np.arange(0, (n + 1) * size, size, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def log_append(root: str, total: int, rec: int, batch: int, fsync: str, compression: str = "none",
               json_like: bool = False) -> tuple[float, int, int]:  # fmt: skip
    """Seconds, records and on-disk bytes to append ``total`` bytes of values."""
    d = tempfile.mkdtemp(dir=root)
    log = Log(d)
    log.create_topic("b", retention=None, compression=compression, segment_bytes="1GiB")
    per_batch = max(1, batch // rec)
    vals = _values(per_batch, rec, json_like=json_like)
    df = pa.table({"value": vals})
    n_batches = max(1, total // (per_batch * rec))
    with log.producer(fsync=fsync, batch_bytes=2 * batch) as p:  # one on-disk batch per call
        t0 = time.perf_counter()
        for _ in range(n_batches):
            p.send_batch("b", df, value="value", partition=0)
        if fsync == "interval":
            p.flush()
        dt = time.perf_counter() - t0
    size = log.partition("b", 0).size_bytes()
    log.close()
    shutil.rmtree(d)
    return dt, n_batches * per_batch, size


def log_read(root: str, total: int, rec: int) -> tuple[float, int, int]:
    d = tempfile.mkdtemp(dir=root)
    log = Log(d)
    log.create_topic("b", retention=None, segment_bytes="1GiB")
    per_batch = (1 << 20) // rec
    df = pa.table({"value": _values(per_batch, rec)})
    with log.producer(fsync="never") as p:
        for _ in range(max(1, total // (per_batch * rec))):
            p.send_batch("b", df, value="value", partition=0)
    r = PartitionReader(log.partition("b", 0), 0)
    n = nbytes = 0
    t0 = time.perf_counter()
    while (t := r.read(8 << 20)) is not None:
        n += t.num_rows
        nbytes += t.column("value").nbytes
    dt = time.perf_counter() - t0
    r.close()
    log.close()
    shutil.rmtree(d)
    return dt, n, nbytes


def single_sends(root: str, n: int, fsync: str) -> float:
    d = tempfile.mkdtemp(dir=root)
    log = Log(d)
    log.create_topic("b", retention=None)
    value = b"x" * 100
    with log.producer(fsync=fsync) as p:
        t0 = time.perf_counter()
        for _ in range(n):
            p.send("b", value, partition=0)
        dt = time.perf_counter() - t0
    log.close()
    shutil.rmtree(d)
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--total-mb", type=int, default=512, help="bytes written per row (MB)")
    ap.add_argument("--batch-kb", type=int, default=1024, help="bytes per batch / raw chunk (KiB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (median shown)")
    ap.add_argument("--quick", action="store_true", help="64 MB per row")
    args = ap.parse_args()
    total = (64 if args.quick else args.total_mb) * 1_000_000
    batch = args.batch_kb * 1024
    root = tempfile.mkdtemp(prefix="sluice-bench-log-", dir=args.dir)
    print_header("embedded log: append and read throughput")
    print(f"   data dir            {root}")
    print(f"   bytes per row       {total / 1e6:.0f} MB, batches of {batch // 1024} KiB\n")
    try:
        rows = []
        for fsync in ("never", "always"):
            for rec in (100, 1024):
                # raw and log alternate, three times: the median of each is shown, so
                # both see the same page-cache and writeback conditions
                raws, logs = [], []
                for _ in range(args.repeat):
                    os.sync()  # both start with no dirty pages left by the previous run
                    raws.append(
                        total / raw_write(os.path.join(root, "raw.bin"), total, batch, fsync) / 1e6
                    )
                    os.sync()
                    dt, n, _ = log_append(root, total, rec, batch, fsync)
                    logs.append((n * rec / dt / 1e6, n / dt, n))
                raw_mb = float(np.median(raws))
                mb, rps, n = sorted(logs)[len(logs) // 2]
                rows.append(
                    [
                        f"raw disk ({batch // 1024} KiB writes), fsync={fsync}",
                        "-",
                        "-",
                        raw_mb,
                        "1.00",
                    ]
                )
                rows.append(
                    [f"log append {rec} B records, fsync={fsync}", rps, n, mb, f"{mb / raw_mb:.2f}"]
                )
        print_table(["row", "records/s", "records", "MB/s", "vs raw"], rows)
        print()
        n = 2_000 if args.quick else 20_000
        print_table(
            ["single-record send() (100 B)", "records/s"],
            [
                [f"fsync={f}", single_sends(root, n if f != "always" else n // 10, f)]
                for f in ("never", "always")
            ],
        )
        print()
        comp = []
        for codec in ("none", "lz4", "zstd"):
            dt, n, size = log_append(root, total // 2, 200, batch, "never", codec, json_like=True)
            comp.append([codec, n * 200 / size, n / dt, n * 200 / dt / 1e6])
        print_table(["compression (200 B JSON records)", "ratio", "records/s", "MB/s in"], comp)
        print()
        reads = []
        for rec in (100, 1024):
            dt, n, nbytes = log_read(root, total, rec)
            reads.append([f"read {rec} B records", n / dt, nbytes / dt / 1e6])
        print_table(["log read (page cache, checksums verified)", "records/s", "MB/s"], reads)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
