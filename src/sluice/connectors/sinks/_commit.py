"""Publishing what a file sink pre-committed (phase two of two-phase commit).

Shared by ``FileSinkWriter.commit`` and ``FileSink.recover``; every step can be
repeated after a crash at any point and gives the same files:

- a pending part file ``.part-<subtask>-<seq>.<ext>.pending`` is renamed to
  ``part-<subtask>-<seq>.<ext>`` (skipped when only the final name exists);
- a pending segment ``.<name>.<seq>.pending`` of a single file ``<name>`` is
  appended to it, if the file's size (bytes; rows for Parquet) is still the
  size ``before`` recorded for the segment. The first segment of a job
  (``before == 0``) replaces the file. Text is appended in place (a half-done
  append is cut back to ``before`` and redone); Parquet is rewritten row group by
  row group into a hidden file that then replaces it.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from sluice.errors import JobError


def fsync_dir(path: str) -> None:
    """Make renames and deletions in directory ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def publish(directory: str, txn: dict[str, Any], *, parquet: bool, sink: str) -> list[str]:
    """Publish the files of one transaction; return the final names published."""
    done: list[str] = []
    for hidden, final in txn.get("files", []):
        _rename(directory, hidden, final, sink)
        done.append(final)
    for segment, final, before, after in txn.get("segments", []):
        _append(directory, segment, final, int(before), int(after), parquet=parquet, sink=sink)
        if final not in done:
            done.append(final)
    if done:
        fsync_dir(directory)
    return done


def discard(directory: str, pattern: re.Pattern[str]) -> list[str]:
    """Delete the files of ``directory`` whose names match ``pattern``."""
    gone = [n for n in os.listdir(directory) if pattern.match(n)]
    for name in gone:
        os.remove(os.path.join(directory, name))
    if gone:
        fsync_dir(directory)
    return gone


def size_of(path: str, *, parquet: bool) -> int:
    """Rows of a Parquet file, bytes of another one, 0 if it does not exist."""
    if not os.path.exists(path):
        return 0
    if not parquet:
        return os.path.getsize(path)
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        return int(pf.metadata.num_rows)


def _lost(sink: str, directory: str, hidden: str, final: str) -> JobError:
    return JobError(
        f"{sink} sink: cannot commit {hidden!r} in {directory!r}: it is missing and "
        f"{final!r} does not hold it; were files deleted from the output directory "
        "after the checkpoint? Delete the checkpoint to start over"
    )


def _rename(directory: str, hidden: str, final: str, sink: str) -> None:
    src, dst = os.path.join(directory, hidden), os.path.join(directory, final)
    if os.path.exists(src):
        os.replace(src, dst)
    elif not os.path.exists(dst):
        raise _lost(sink, directory, hidden, final)


def _append(
    directory: str, segment: str, final: str, before: int, after: int, *, parquet: bool, sink: str
) -> None:
    src, dst = os.path.join(directory, segment), os.path.join(directory, final)
    have = size_of(dst, parquet=parquet)
    if not os.path.exists(src):
        if have >= after:
            return  # appended already
        raise _lost(sink, directory, segment, final)
    if before == 0:
        os.replace(src, dst)
        return
    if have >= after:  # appended, but the segment was not removed yet
        os.remove(src)
        return
    if have < before or (parquet and have != before):
        raise JobError(
            f"{sink} sink: cannot append {segment!r} to {final!r} in {directory!r}: the file "
            f"holds {have} {'rows' if parquet else 'bytes'}, expected {before}; was it changed "
            "by another program after the checkpoint?"
        )
    if parquet:
        _concat_parquet(directory, dst, src)
    else:
        with open(dst, "r+b") as out, open(src, "rb") as seg:
            out.truncate(before)  # a half-done earlier append
            out.seek(before)
            shutil.copyfileobj(seg, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    os.remove(src)


def _concat_parquet(directory: str, dst: str, src: str) -> None:
    import pyarrow.parquet as pq

    tmp = os.path.join(directory, f".{os.path.basename(dst)}.merging")
    with pq.ParquetFile(dst) as a, pq.ParquetFile(src) as b:
        schema = a.schema_arrow
        with open(tmp, "wb") as fh:
            writer = pq.ParquetWriter(fh, schema)
            for pf in (a, b):
                for i in range(pf.num_row_groups):
                    writer.write_table(pf.read_row_group(i).cast(schema))
            writer.close()
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, dst)
