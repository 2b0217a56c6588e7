"""The actor shell. A trade enters in connection.py, is shaped in normaliser.py and leaves
in producer.py; coordinator.py supervises them all and metrics.py serves what they report."""

from datetime import timedelta

TICK = "tick"


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
