"""Which endpoint of a venue to connect next, and when.

The endpoints of a venue are mirrors serving the same trades, so an endpoint that refuses,
fails its handshake, drops before delivering data, or goes stale is left at once for the
next one. Only when a whole round of the venue's endpoints has failed is there a wait:
full jitter, bounded by half of how long the venue has been without data (at least the
base delay, at most the cap), so a short outage costs a few seconds and a long one is not
hammered. Each failed round, once the venue has been without data for the base delay, is
one failure of its circuit breaker (a blip of a few seconds never opens it); while it is
open nothing is tried, and after the reset timeout one trial goes to the first endpoint
(half-open). A connection that delivered data and then dropped is reconnected at once to
the same endpoint; data flowing again is what counts as success, never a bare handshake.
Every attempt stays within Binance's connection-attempt limit per IP.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from dataclasses import dataclass

from k2actors.core.breaker import BreakerState, CircuitBreaker
from k2actors.core.reasons import EndReason

# Binance allows 300 connection attempts per 5 minutes per IP; the service keeps a margin
# for whatever else shares the address.
ATTEMPTS_PER_WINDOW = 250
ATTEMPT_WINDOW_SECONDS = 300.0


@dataclass(frozen=True)
class Attempt:
    url: str
    delay: float  # seconds from now


class AttemptBudget:
    """Connection attempts in the last window, shared by every venue of the service."""

    def __init__(self, limit: int = ATTEMPTS_PER_WINDOW, window: float = ATTEMPT_WINDOW_SECONDS):
        self._limit = limit
        self._window = window
        self._made: collections.deque[float] = collections.deque()

    def spend(self, now: float, delay: float) -> float:
        """An attempt planned `delay` seconds from now: the delay it must actually wait."""
        at = now + delay
        while self._made and self._made[0] <= at - self._window:
            self._made.popleft()
        if len(self._made) >= self._limit:
            at = self._made[len(self._made) - self._limit] + self._window
        self._made.append(at)
        return at - now


class FailoverPolicy:
    def __init__(
        self,
        urls: tuple[str, ...],
        base_delay: float,
        max_delay: float,
        breaker: CircuitBreaker,
        budget: AttemptBudget,
        draw: Callable[[], float] = random.random,
    ):
        self.urls = urls
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._breaker = breaker
        self._budget = budget
        self._draw = draw
        self._index = 0
        self._tried: set[str] = set()  # endpoints failed in this round
        self._dark_since: float | None = None  # when the venue last had data flowing
        self.left: dict[str, str] = {}  # endpoint -> why it was last left

    @property
    def active(self) -> str:
        return self.urls[self._index]

    def first(self, now: float) -> Attempt:
        self._dark_since = now
        return self._attempt(now, 0.0)

    def streaming(self, now: float) -> float | None:
        """Data flows from the active endpoint: success. Returns how long the venue had been
        without data, if it had."""
        dark_since, self._dark_since = self._dark_since, None
        self._breaker.record_success()
        self._tried.clear()
        self.left.pop(self.active, None)
        return None if dark_since is None else now - dark_since

    def ended(self, now: float, reason: EndReason, detail: str, streamed: bool, last_frame_at: float | None = None) -> Attempt:
        """The active connection ended (its last frame came at `last_frame_at`); say what to
        try next."""
        if self._dark_since is None:
            self._dark_since = min(now, last_frame_at) if streamed and last_frame_at is not None else now
        if streamed and reason is not EndReason.STALE:
            # A connection that was delivering dropped: the same endpoint at once, no fault yet.
            return self._attempt(now, 0.0)
        self.left[self.active] = detail
        if self._breaker.state(now) is BreakerState.HALF_OPEN:
            self._breaker.record_failure(now)
            return self._wait_for_trial(now)
        self._tried.add(self.active)
        untried = [url for url in self.urls if url not in self._tried]
        if untried:
            self._index = self.urls.index(untried[0])
            return self._attempt(now, 0.0)
        self._tried.clear()  # the whole round failed
        dark_for = now - self._dark_since
        if dark_for >= self._base_delay:
            self._breaker.record_failure(now)
        if self._breaker.state(now) is BreakerState.OPEN:
            return self._wait_for_trial(now)
        self._index = 0
        bound = min(self._max_delay, max(self._base_delay, dark_for / 2))
        return self._attempt(now, self._draw() * bound)

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
        self._tried.clear()
        reopens_at = self._breaker.reopens_at()  # open, so it has a time
        return self._attempt(now, max((reopens_at or now) - now, 0.0))

    def _attempt(self, now: float, delay: float) -> Attempt:
        return Attempt(self.active, self._budget.spend(now, delay))


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
