"""What the ledger published, read back from the Avro bodies the producer hands to Kafka."""

from __future__ import annotations

from collections.abc import Iterable

from k2actors.core.avro import read_body
from k2actors.core.payloads import Encoded, Record
from k2actors.core.raw import Headers


def shaped(records: Iterable[Encoded]) -> list[tuple[str, Record, Headers]]:
    """(stream type, record, lineage) of each record, as a consumer of its topic reads it."""
    return [(record.stream, read_body(record.stream, record.body), record.headers) for record in records]
