"""The Avro bodies of records: written where records are shaped, so that a record crosses to
the producer as the bytes Kafka will hold, not as a pickled dict.

A body is Confluent's wire format without its first five bytes (the magic byte and the
schema id): the id is the registry's, and only the producer, which registers the schemas,
puts it in front. Timestamps are written and read as the longs the records carry (the
schemas' timestamp-micros logical type is the reader's to apply), so a body read back is the
record it was written from, field for field: what a dead letter of a record is made of.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import fastavro

from k2actors.core.payloads import Record
from k2actors.core.streams import STREAM_TYPES

_TIMESTAMPS = frozenset({"timestamp-millis", "timestamp-micros"})


def schema_for(stream: str) -> str:
    """The stream type's schema, as registered."""
    return resources.files("k2actors").joinpath(f"schemas/{STREAM_TYPES[stream].schema}").read_text()


def _timestamps_as_longs(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _timestamps_as_longs(value) for key, value in schema.items()
                if not (key == "logicalType" and value in _TIMESTAMPS)}
    if isinstance(schema, list):
        return [_timestamps_as_longs(item) for item in schema]
    return schema


@cache
def _parsed(stream: str) -> Any:
    return fastavro.parse_schema(_timestamps_as_longs(json.loads(schema_for(stream))))


def write_body(stream: str, record: Mapping[str, Any]) -> bytes:
    """The record's Avro body; the schema's refusal (a ValueError or TypeError) says what is wrong."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, _parsed(stream), record)
    return buffer.getvalue()


def read_body(stream: str, body: bytes) -> Record:
    record = fastavro.schemaless_reader(io.BytesIO(body), _parsed(stream), None)
    assert isinstance(record, dict)  # every stream type's schema is a record's
    return record
