"""What an endpoint's connections asked for, what the venue answered, and when a refused
request is asked again, without sockets or threads.

A refused SUBSCRIBE leaves its symbols silent on a connection that otherwise streams, so it
must not pass unnoticed, nor be retried at a pace that gets the connection (5 incoming
messages a second) or the IP (300 connections per 5 minutes) banned: the request alone is
sent again on its connection, after an exponential backoff with full jitter. A refusal is
reported until the same request is answered with success; replacing the connections starts
afresh, since their subscriptions are asked for again. A refusal that names no request
(Coinbase's errors) cannot be asked again alone: it stands, reported, until the endpoint is
connected afresh.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from k2actors.core.backoff import backoff_delay

RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class SubscriptionPlan:
    """How one connection asks a venue for its streams: the URL it opens, then its requests,
    each with the id the venue's answer names it by, sent `interval` seconds apart (venues
    count the messages a connection sends)."""

    url: str
    requests: tuple[tuple[int, str], ...]  # (request id, the request as sent)
    interval: float


@dataclass(frozen=True, slots=True)
class Resend:
    """Send this SUBSCRIBE again on the connection at this index of the plans."""

    link: int
    request_id: int
    message: str


@dataclass(slots=True)
class _Refusal:
    code: int
    message: str
    attempts: int
    retry_at: float


class Subscriptions:
    def __init__(self, plans: Sequence[SubscriptionPlan], draw: Callable[[], float] = random.random) -> None:
        self._requests: dict[int, tuple[int, str]] = {}  # request id -> (link, the request as sent)
        for link, plan in enumerate(plans):
            for request_id, message in plan.requests:
                self._requests[request_id] = (link, message)
        self._refused: dict[int, _Refusal] = {}
        self._unnamed: tuple[int, tuple[int, str]] | None = None  # refusals naming no request: (how many, the last's code and message)
        self._draw = draw

    def refused(self, request_id: object, code: int, message: str, now: float) -> float | None:
        """The venue refused a request. When it is one of ours, the seconds until it is asked
        again; None for an id this endpoint never sent (nothing to retry). One that names no
        request (None) stands until the endpoint is connected afresh."""
        if request_id is None:
            self._unnamed = ((self._unnamed[0] if self._unnamed else 0) + 1, (code, message))
            return None
        if not isinstance(request_id, int) or request_id not in self._requests:
            return None
        previous = self._refused.get(request_id)
        attempts = previous.attempts + 1 if previous else 1
        delay = backoff_delay(attempts, RETRY_BASE_SECONDS, RETRY_CAP_SECONDS, self._draw)
        # Never sooner than the base: the venue counts every message a connection sends.
        delay = max(delay, RETRY_BASE_SECONDS)
        self._refused[request_id] = _Refusal(code, message, attempts, now + delay)
        return delay

    def answered(self, request_id: object) -> None:
        """A request was answered with success."""
        if isinstance(request_id, int):
            self._refused.pop(request_id, None)

    def due(self, now: float) -> list[Resend]:
        """The refused requests to send again now; each is due again only once refused again."""
        due = []
        for request_id, refusal in self._refused.items():
            if refusal.retry_at <= now:
                refusal.retry_at = float("inf")
                link, message = self._requests[request_id]
                due.append(Resend(link, request_id, message))
        return due

    def status(self) -> tuple[bool, str]:
        """(no request stands refused, what /ready says)."""
        if not self._refused and not self._unnamed:
            return True, "every subscription answered with success, or none needed"
        said = [f"request {request_id}: code {refusal.code} {refusal.message!r} ({refusal.attempts} refusals)"
                for request_id, refusal in sorted(self._refused.items())]
        if self._refused:
            said = [f"refused, asked again with backoff: {'; '.join(said)}"]
        if self._unnamed:
            count, (code, message) = self._unnamed
            said.append(f"refused, naming no request, until connected afresh: {count} refusals, the last code {code} {message!r}")
        return False, "; ".join(said)
