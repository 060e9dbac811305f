"""The job the crash tests kill: JSONL files -> keyed 1 s windows with allowed
lateness -> exactly-once JSONL part files (results and late rows).

    python tests/crash/job.py SRC_DIR OUT_DIR CKPT_DIR PARALLELISM
"""

from __future__ import annotations

import sys
import time

import sluice as sl


def slow(row: dict) -> bool:
    # deterministic pacing so that kills land in the middle of the job
    if row["i"] % 50 == 0:
        time.sleep(0.005)
    return True


def main() -> None:
    src, out, ckpt, parallelism = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    flow = sl.Flow("crashjob", max_batch_rows=250)
    results = (
        flow.source(sl.sources.jsonl(src), time="ts", watermark="2s")
        .filter(slow)
        .key_by("user")
        .window(sl.windows.tumbling("1s"), allowed_lateness="1s")
        .agg(n=sl.agg.count(), total=sl.agg.sum("amount"), last=sl.agg.last("i"))
    )
    results.sink(sl.sinks.jsonl(f"{out}/results"))
    results.late().sink(sl.sinks.jsonl(f"{out}/late"))
    print("ready", flush=True)  # imports done: the test times its kill from here
    flow.run(parallelism=parallelism, checkpoint_dir=ckpt, checkpoint_interval="40ms")


if __name__ == "__main__":
    main()
