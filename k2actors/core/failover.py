"""Which endpoint of a venue to connect next, and when.

One active endpoint at a time. A failed attempt is retried on the same endpoint with
backoff; after `max_attempts` failures in a row the endpoint is given up and the next
one is tried. Each endpoint given up is one failure of the venue's circuit breaker, so
with the defaults (3 endpoints, threshold 3) the circuit opens once every endpoint has
failed. While open nothing is tried; after the reset timeout one trial goes to the
first endpoint (half-open), and its success closes the circuit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from k2actors.core.backoff import backoff_delay
from k2actors.core.breaker import BreakerState, CircuitBreaker


@dataclass(frozen=True)
class Attempt:
    url: str
    delay: float  # seconds from now


class FailoverPolicy:
    def __init__(
        self,
        urls: tuple[str, ...],
        max_attempts: int,
        base_delay: float,
        max_delay: float,
        breaker: CircuitBreaker,
        draw=random.random,
    ):
        self.urls = urls
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._breaker = breaker
        self._draw = draw
        self._index = 0
        self._failures = 0  # consecutive failed attempts on the active endpoint

    @property
    def active(self) -> str:
        return self.urls[self._index]

    def first(self) -> Attempt:
        return Attempt(self.active, 0.0)

    def connected(self) -> None:
        self._failures = 0
        self._breaker.record_success()

    def failed(self, now: float, was_streaming: bool) -> Attempt:
        """The active connection failed or ended; say what to try next."""
        if was_streaming:
            # A connection that was delivering dropped: reconnect at once, it is no fault yet.
            self._failures = 0
            return Attempt(self.active, 0.0)
        if self._breaker.state(now) is BreakerState.HALF_OPEN:
            self._breaker.record_failure(now)
            return self._wait_for_trial(now)
        self._failures += 1
        if self._failures < self._max_attempts:
            delay = backoff_delay(self._failures, self._base_delay, self._max_delay, self._draw)
            return Attempt(self.active, delay)
        self._failures = 0
        self._breaker.record_failure(now)
        if self._breaker.state(now) is BreakerState.OPEN:
            return self._wait_for_trial(now)
        self._index = (self._index + 1) % len(self.urls)
        return Attempt(self.active, 0.0)

    def breaker_states(self, now: float) -> dict[str, BreakerState]:
        """Per endpoint: the venue circuit's state shown on the endpoint it concerns."""
        venue = self._breaker.state(now)
        states = {}
        for url in self.urls:
            if venue is BreakerState.CLOSED:
                states[url] = BreakerState.CLOSED
            elif venue is BreakerState.HALF_OPEN and url == self.active:
                states[url] = BreakerState.HALF_OPEN
            else:
                states[url] = BreakerState.OPEN
        return states

    def circuit(self, now: float) -> BreakerState:
        return self._breaker.state(now)

    def _wait_for_trial(self, now: float) -> Attempt:
        self._index = 0
        self._failures = 0
        reopens_at = self._breaker.reopens_at()  # open, so it has a time
        return Attempt(self.active, max((reopens_at or now) - now, 0.0))


class DarkDeadline:
    """When to give up: no endpoint streaming, with a circuit open, for `limit` seconds.

    A service that can no longer reach its exchange must not hang on quietly: past this
    deadline it exits non-zero, so that whatever restarts it (compose, systemd, Kubernetes)
    acts and the outage is loud.
    """

    def __init__(self, limit: float):
        self._limit = limit
        self._dark_since: float | None = None

    def expired(self, now: float, streaming: bool, circuit_open: bool) -> bool:
        if streaming or (self._dark_since is None and not circuit_open):
            self._dark_since = None
            return False
        if self._dark_since is None:
            self._dark_since = now
        return now - self._dark_since >= self._limit
