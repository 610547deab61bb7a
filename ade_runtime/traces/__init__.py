"""Edit-trace format v1: records, validation, streaming reader and append-only writer.

See ``docs/trace-format-v1.md`` for the contract and ``docs/traces.md`` for the API.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from .claims import DuplicateRecordId, RecordRefused
from .field_checks import REASONS, Problem
from .images import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, IMAGE_MODES, ImageChecker
from .prepare import RecordLimits
from .reader import (
    DEFAULT_MAX_LINE_BYTES,
    Reject,
    TraceDataset,
    find_shards,
    load_records,
    read_traces,
    reject_lines,
)
from .records import FORMAT, Attempt, Cost, EditRecord, Flaw, Judge
from .stats import StatsAccumulator, compute_stats, format_stats
from .validate import parse_record, validate_record
from .writer import TraceWriter

SCHEMA_FILE = "trace-format-v1.schema.json"


def record_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one v1 record, shipped with the package."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "FORMAT",
    "IMAGE_MODES",
    "REASONS",
    "SCHEMA_FILE",
    "Attempt",
    "Cost",
    "DuplicateRecordId",
    "EditRecord",
    "Flaw",
    "ImageChecker",
    "StatsAccumulator",
    "Judge",
    "Problem",
    "RecordLimits",
    "RecordRefused",
    "Reject",
    "TraceDataset",
    "TraceWriter",
    "compute_stats",
    "find_shards",
    "format_stats",
    "load_records",
    "parse_record",
    "read_traces",
    "record_schema",
    "reject_lines",
    "validate_record",
]
