"""BackfillActor: the service's REST requests once started: declared gaps filled from the
venues' trade history, and the snapshots order books are rebuilt from.

The Normaliser sends each gap it declares and each book it must rebuild; k2actors.core.backfill
decides which request to make and when (request weight, Retry-After, bans, retries) and what
each answer means, and k2actors.core.kraken_backfill and k2actors.core.coinbase_backfill the
same for Kraken's and Coinbase's gaps, each within a budget of its own. A fetcher thread per
venue makes the requests, so live streaming never waits for any of this, and the pages and
snapshots go back to the Normaliser, which shapes the pages like streamed trades and
rebuilds the books from the snapshots.

The fetcher wakes the actor through a pipe the actor watches when an answer is ready; the
actor asks again every PUMP_SECONDS only while a request waits for its time. Idle, it wakes
once a second, for its tick.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from email.message import Message

from thespian.actors import ActorAddress

from k2actors.actors.shell import Supervised, seconds
from k2actors.clients import exchange_tls
from k2actors.core.backfill import Backfill, BackfillEvent, PageFetched, RestReply, RestRequest, SnapshotTaken, Unfilled
from k2actors.core.coinbase_backfill import CoinbaseBackfill
from k2actors.core.kraken_backfill import KrakenBackfill
from k2actors.core.paged_backfill import PagedBackfill, Throttled, TradesRequest
from k2actors.core.telemetry import log_line
from k2actors.messages import (
    BackfillRequest,
    BackfillSetup,
    BookSnapshotRequest,
    CoinbaseBackfillRequest,
    IdsAbandoned,
    KrakenBackfillRequest,
)
from k2actors.net import new_conn_id

log = logging.getLogger("k2actors.backfill")

REQUEST_TIMEOUT_SECONDS = 10
# While a request waits for its time (a retry, Retry-After, the weight budget), the actor
# looks again this often.
PUMP_SECONDS = 0.1
PUMP = "pump"


class _Fetcher(threading.Thread):
    """Performs RestRequests one at a time; answers are collected with `take`."""

    def __init__(self, setup: BackfillSetup, wake_fd: int):
        super().__init__(name="backfill-fetcher", daemon=True)
        self._tls = exchange_tls(setup.tls_ca_file, setup.tls_verify)
        self._wake_fd = wake_fd
        self.requests: queue.Queue[RestRequest | TradesRequest | None] = queue.Queue()
        self._answers: queue.Queue[RestReply] = queue.Queue()

    def take(self) -> RestReply | None:
        try:
            return self._answers.get_nowait()
        except queue.Empty:
            return None

    def run(self) -> None:
        while (request := self.requests.get()) is not None:
            self._answers.put(self._get(request))
            os.write(self._wake_fd, b"a")

    def _get(self, request: RestRequest | TradesRequest) -> RestReply:
        target, conn_id = request.target(), new_conn_id()
        try:
            with urllib.request.urlopen(f"{request.base_url}{target}", timeout=REQUEST_TIMEOUT_SECONDS,
                                        context=self._tls) as response:
                body = response.read()
                return RestReply(response.status, body, _lower(response.headers), time.time_ns() // 1000, target, conn_id)
        except urllib.error.HTTPError as error:
            return RestReply(error.code, error.read(), _lower(error.headers), time.time_ns() // 1000, target, conn_id)
        except OSError as exc:  # refused, reset, timed out, TLS
            return RestReply(None, str(exc).encode(), {}, time.time_ns() // 1000, target, conn_id)


def _lower(headers: Message) -> dict[str, str]:
    """HTTP header names are case-insensitive: the core looks them up in lower case."""
    return {name.lower(): value for name, value in headers.items()}


class BackfillActor(Supervised[BackfillSetup]):
    SETUP = BackfillSetup

    def __init__(self) -> None:
        super().__init__()
        self._fetcher: _Fetcher | None = None
        self._backfill: Backfill | None = None
        self._kraken: KrakenBackfill | None = None
        self._coinbase: CoinbaseBackfill | None = None
        # Kraken's and Coinbase's backfill, each with a fetcher of its own
        self._paged: list[tuple[PagedBackfill, _Fetcher]] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)  # Thespian may report it readable twice for one write
        self._pump_due = False

    def metrics_address(self) -> ActorAddress:
        return self.setup.metrics

    def configure(self, previous: BackfillSetup | None) -> None:
        if previous is None:
            self._backfill = Backfill(self.setup.rest_urls, self.metrics, self.setup.max_age_seconds, self.setup.snapshot_limit)
            self._fetcher = _Fetcher(self.setup, self._wake_w)
            self._fetcher.start()
            if self.setup.kraken is not None:
                self._kraken = KrakenBackfill(self.setup.kraken.rest_url, self.metrics, self.setup.kraken.max_age_seconds)
                self._paged.append((self._kraken, _Fetcher(self.setup, self._wake_w)))
            if self.setup.coinbase_rest_url is not None:
                self._coinbase = CoinbaseBackfill(self.setup.coinbase_rest_url, self.metrics)
                self._paged.append((self._coinbase, _Fetcher(self.setup, self._wake_w)))
            for _, fetcher in self._paged:
                fetcher.start()

    def watched(self) -> list[int]:
        return [self._wake_r]

    def on_readable(self, fds: set[int]) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 65536)
        self._pump(time.monotonic())

    def receiveMsg_BackfillRequest(self, message: BackfillRequest, sender: ActorAddress) -> None:
        if self._backfill is not None:
            now = time.monotonic()
            self._act(self._backfill.add(message.stream, message.venue, message.symbol, message.first_id, message.last_id, now))
            self._pump(now)

    def receiveMsg_KrakenBackfillRequest(self, message: KrakenBackfillRequest, sender: ActorAddress) -> None:
        if self._kraken is not None:
            now = time.monotonic()
            self._act(self._kraken.add(message.symbol, message.pair, message.first_id, message.last_id, message.after_us,
                                       now, time.time_ns() // 1000))
            self._pump(now)

    def receiveMsg_CoinbaseBackfillRequest(self, message: CoinbaseBackfillRequest, sender: ActorAddress) -> None:
        if self._coinbase is not None:
            now = time.monotonic()
            self._act(self._coinbase.add(message.symbol, message.product_id, message.first_id, message.last_id, now))
            self._pump(now)

    def receiveMsg_BookSnapshotRequest(self, message: BookSnapshotRequest, sender: ActorAddress) -> None:
        if self._backfill is not None:
            self._backfill.ask_snapshot(message.venue, message.symbol)
            self._pump(time.monotonic())

    def on_wakeup(self, payload: object) -> None:
        if payload == PUMP:
            self._pump_due = False
            self._pump(time.monotonic())

    def on_tick(self, now: float) -> None:
        self._pump(now)

    def _pump(self, now: float) -> None:
        """The answer that came, if any; then the next request, if its time has come."""
        if self._backfill is None or self._fetcher is None:
            return
        while (answer := self._fetcher.take()) is not None:
            self._act(self._backfill.answer(answer, now))
        request, events = self._backfill.next_request(now)
        self._act(events)
        if request is not None:
            self._fetcher.requests.put(request)
        waiting, open_gaps = request is None and self._backfill.waiting, self._backfill.open_gaps
        for paged, fetcher in self._paged:
            while (answer := fetcher.take()) is not None:
                self._act(paged.answer(answer, now))
            paged_request = paged.next_request(now)
            if paged_request is not None:
                fetcher.requests.put(paged_request)
            waiting = waiting or (paged_request is None and paged.waiting)
            open_gaps += paged.open_gaps
        if waiting and not self._pump_due:
            self._pump_due = True
            self.wakeupAfter(seconds(PUMP_SECONDS), PUMP)
        self.metrics.set("k2_backfill_gaps_open", open_gaps)

    def on_exit(self) -> None:
        for fetcher in (self._fetcher, *(fetcher for _, fetcher in self._paged)):
            if fetcher is not None:
                fetcher.requests.put(None)

    def _act(self, events: list[BackfillEvent] | list[BackfillEvent | Throttled]) -> None:
        for event in events:
            if isinstance(event, PageFetched):
                self.send(self.setup.normaliser, event.page)
            elif isinstance(event, SnapshotTaken):
                self.send(self.setup.normaliser, event.snapshot)
            else:
                log_line(log, event.report())
            if isinstance(event, Unfilled):
                gap = event.gap
                self.send(self.setup.producer, IdsAbandoned(gap.stream, gap.venue, gap.symbol, event.first_id, event.last_id))
