"""A circuit breaker: closed, open for a reset timeout after enough failures, then half-open."""

from __future__ import annotations

from enum import IntEnum


class BreakerState(IntEnum):
    # The values are the k2_circuit_breaker_state gauge.
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, failure_threshold: int, reset_timeout: float):
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._failures = 0
        self._opened_at: float | None = None

    def state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now - self._opened_at >= self._reset_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def reopens_at(self) -> float | None:
        return None if self._opened_at is None else self._opened_at + self._reset_timeout

    def record_failure(self, now: float) -> None:
        # A failure while half-open (the one trial) reopens at once.
        if self.state(now) is BreakerState.HALF_OPEN:
            self._opened_at = now
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._opened_at = now

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
