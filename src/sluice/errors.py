"""Exception classes. Every error Sluice raises on purpose is a :class:`SluiceError`."""

from __future__ import annotations


class SluiceError(Exception):
    """Base class of all errors raised by Sluice."""


class ConfigError(SluiceError, ValueError):
    """A parameter given to the API is invalid (bad duration, unknown column, ...)."""


class PlanError(SluiceError):
    """The dataflow cannot be planned (a stream with no sink, a cycle, ...)."""


class BadRecordError(SluiceError):
    """A source met a record it cannot read: bad JSON, a missing or unparsable
    timestamp, a value that does not match the schema.

    The message names the source, the file and the line (or row) and the reason.
    Pass ``on_error="dead_letter"`` to the source to route such records to
    ``stream.dead_letters()`` instead.
    """

    def __init__(
        self,
        source: str,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        raw: str | None = None,
    ) -> None:
        self.source = source
        self.reason = reason
        self.file = file
        self.line = line
        self.raw = raw
        where = f"source {source!r}"
        if file is not None:
            where += f", file {file}"
        if line is not None:
            where += f", line {line}" if file is not None else f", row {line}"
        msg = f"bad record in {where}: {reason}"
        if raw is not None:
            snippet = raw if len(raw) <= 200 else raw[:200] + "..."
            msg += f"\n  record: {snippet}"
        msg += "\n  (pass on_error='dead_letter' to the source to route bad records to stream.dead_letters())"
        super().__init__(msg)


class JobError(SluiceError):
    """An operator failed while the job ran; the message names the operator."""
