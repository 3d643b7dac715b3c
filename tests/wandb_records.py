"""Read the records of an offline W&B run file (`run-<id>.wandb`) back, for assertions.

The file is W&B's LevelDB-style log: a 7-byte header (`:W&B`, magic, version), then 32 KiB blocks
of records, each with a 7-byte header (checksum, length, type: full/first/middle/last) and a
protobuf `Record` payload. wandb >= 0.19 reads these in its Go core only, so the tests carry this
small reader; it decodes with wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = 7, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - (pos % _BLOCK)
        if left_in_block < _HEADER:  # the block's tail is padding
            pos += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        else:  # zero padding at the end of the file
            break


def read_records(run_file: Path) -> list[wandb_internal_pb2.Record]:
    """Every protobuf `Record` in `run_file`, in order."""
    records = []
    for payload in _payloads(Path(run_file).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def read_finished_records(run_file: Path, timeout: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """`read_records` once the run's last record (`exit`) is on disk.

    `wandb.finish()` can return before W&B's service has flushed an offline run file (wandb 0.31:
    every run after a process's first), so a test reading it at once may see only the header.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_file} has no exit record after {timeout} s")
        time.sleep(0.2)


def history(records: list[wandb_internal_pb2.Record]) -> list[dict]:
    """The logged rows (`wandb.log` calls): key -> decoded JSON value."""
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
    return rows


def config(records: list[wandb_internal_pb2.Record]) -> dict:
    """The run config as logged (flattened keys -> decoded JSON values)."""
    out = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        items = (
            r.config.update if kind == "config" else r.run.config.update if kind == "run" else []
        )
        for i in items:
            out[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return out


def run_info(records: list[wandb_internal_pb2.Record]) -> wandb_internal_pb2.RunRecord:
    """The run record (id, group, name, ...)."""
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")
