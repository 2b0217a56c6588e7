"""The stream types' table: every entry names a topic the configuration has and a schema the package ships."""

import dataclasses
import json

import fastavro
import pytest

from k2actors.config import KafkaConfig
from k2actors.core.streams import CONSECUTIVE, STREAM_TYPES, SUPERSEDING, Numbering, is_raw
from k2actors.outlets import schema_for

KAFKA_KEYS = {f.name for f in dataclasses.fields(KafkaConfig)}


@pytest.mark.parametrize("stream", list(STREAM_TYPES))
def test_a_stream_type_names_a_topic_key_of_the_kafka_section_and_a_schema_of_the_package(stream):
    assert STREAM_TYPES[stream].topic_key in KAFKA_KEYS
    schema = fastavro.parse_schema(json.loads(schema_for(stream)))
    assert schema["type"] == "record"


def test_every_stream_type_has_a_topic_of_its_own_by_default():
    topics = [KafkaConfig().topic_for(stream) for stream in STREAM_TYPES]
    assert len(set(topics)) == len(topics)


def test_each_numbering_is_its_own_set_of_stream_types():
    raw = [stream for stream in STREAM_TYPES if is_raw(stream)]
    assert raw == ["raw", "kraken.raw", "coinbase.raw"]
    assert set(CONSECUTIVE) == {"trade", "aggTrade", "kraken.trade", "coinbase.trade"}
    assert set(SUPERSEDING) == {"bookTicker", "book", "kraken.ticker", "kraken.book", "coinbase.ticker", "coinbase.book"}
    assert {STREAM_TYPES[s].numbering for s in raw} == {Numbering.FRAMES}
