"""k2actors: Binance spot trades into Kafka as K2 v2 Avro records, on Thespian actors."""

from k2actors._version import __version__

__all__ = ["__version__"]
