"""BackfillActor: fills declared gaps from the venue's REST trade history.

The Normaliser sends each gap it declares; a fetcher thread asks
`GET /api/v3/historicalTrades` page by page within Binance's request weight, and the pages
go back to the Normaliser, which shapes them like streamed trades. Live streaming never
waits for any of this. A gap that cannot be filled (REST down, ids no longer served, an IP
ban) stays counted as missing and is logged with its range.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Mapping

from thespian.actors import Actor, ActorExitRequest, WakeupMessage

from k2actors.actors import TICK, report_alive, seconds
from k2actors.clients import exchange_tls
from k2actors.core.backfill import HISTORICAL_TRADES_WEIGHT, GapFill, RequestBudget
from k2actors.core.backoff import backoff_delay
from k2actors.core.binance import Rejected, historical_trades
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import BackfilledTrades, BackfillRequest, BackfillSetup

log = logging.getLogger("k2actors.backfill")

TICK_SECONDS = 0.2
HEARTBEAT_EVERY_TICKS = 5
REQUEST_TIMEOUT_SECONDS = 10
# A page that fails this many times running (connection refused, 5xx) gives the gap up.
MAX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
# Retry-After when a 429 or 418 does not say; an IP ban (418) lasts minutes to days.
DEFAULT_RETRY_AFTER_SECONDS = {429: 60.0, 418: 600.0}


class _Fetcher(threading.Thread):
    """Works through the gaps one page at a time; tells the actor through `outbox`."""

    def __init__(self, setup: BackfillSetup):
        super().__init__(name="backfill-fetcher", daemon=True)
        self._setup = setup
        self._tls = exchange_tls(setup.tls_ca_file, setup.tls_verify)
        self.gaps: queue.Queue[tuple[GapFill, float]] = queue.Queue()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._outbox: list[tuple] = []
        self._budget = RequestBudget()
        self._banned_until = 0.0

    def take(self) -> list[tuple]:
        with self._lock:
            outbox, self._outbox = self._outbox, []
            return outbox

    def _post(self, *item) -> None:
        with self._lock:
            self._outbox.append(item)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                gap, requested_at = self.gaps.get(timeout=0.5)
            except queue.Empty:
                continue
            self._fill(gap)
            self._post("finished", gap, requested_at)

    def _fill(self, gap: GapFill) -> None:
        url = self._setup.rest_urls[gap.venue]
        failures = 0
        while not gap.done and not self.stopping.is_set():
            now = time.monotonic()
            if now < self._banned_until:
                self._post("unfilled", gap, gap.give_up(), "banned", "the venue banned this IP (HTTP 418)")
                return
            wait = self._budget.delay(now, HISTORICAL_TRADES_WEIGHT)
            if wait > 0:
                self.stopping.wait(wait)
                continue
            from_id, limit = gap.request()
            self._budget.spend(now, HISTORICAL_TRADES_WEIGHT)
            status, body, headers = self._get(url, gap.symbol, from_id, limit)
            self._post("request", str(status or "error"))
            used = headers.get("X-MBX-USED-WEIGHT-1M") or ""
            if used.isdigit():
                self._budget.observe_used(time.monotonic(), int(used))
            if status == 200:
                failures = 0
                self._take_page(gap, url, body)
            elif status in (429, 418):
                retry_after = _retry_after(headers, DEFAULT_RETRY_AFTER_SECONDS[status])
                if status == 418:  # banned: gaps are given up until then, not waited for
                    self._banned_until = time.monotonic() + retry_after
                else:
                    self._budget.block(time.monotonic(), retry_after)
                self._post("limited", gap, status, retry_after)
            else:
                failures += 1
                if failures >= MAX_ATTEMPTS:
                    detail = f"{failures} attempts failed, the last: {status or ''} {body[:200]!r}"
                    self._post("unfilled", gap, gap.give_up(), "rest_unavailable", detail)
                    return
                self.stopping.wait(backoff_delay(failures, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS))

    def _take_page(self, gap: GapFill, url: str, body: bytes) -> None:
        parsed = historical_trades(body, gap.symbol)
        if isinstance(parsed, Rejected):
            self._post("unfilled", gap, gap.give_up(), "rest_unusable", f"{parsed.reason}: {parsed.detail}")
            return
        trades = [event for _, event in parsed if not isinstance(event, Rejected)]
        rejected = tuple((json.dumps(row).encode(), event) for row, event in parsed if isinstance(event, Rejected))
        page = gap.take(trades)
        self._post("page", BackfilledTrades(gap.venue, gap.symbol, url, time.time_ns() // 1000, tuple(page.trades), rejected))
        for first_id, last_id in page.unserved:
            self._post("unfilled", gap, (first_id, last_id), "not_served", "the venue's history does not serve these ids")

    def _get(self, url: str, symbol: str, from_id: int, limit: int) -> tuple[int | None, bytes, Mapping[str, str]]:
        """Status (None: no answer), body and headers (looked up case-insensitively)."""
        query = urllib.parse.urlencode({"symbol": symbol, "fromId": from_id, "limit": limit})
        try:
            with urllib.request.urlopen(f"{url}/api/v3/historicalTrades?{query}", timeout=REQUEST_TIMEOUT_SECONDS,
                                        context=self._tls) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers
        except OSError as exc:  # refused, reset, timed out, TLS
            return None, str(exc).encode(), {}


def _retry_after(headers: Mapping[str, str], default: float) -> float:
    try:
        return max(float(headers.get("Retry-After", default)), 0.0)
    except ValueError:
        return default


class BackfillActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self._parent_pid = os.getppid()
        self._setup: BackfillSetup | None = None
        self._coordinator = None
        self._fetcher: _Fetcher | None = None
        self._metrics = MetricBuffer()
        self._open: set[tuple[str, str, int, int]] = set()  # gaps asked for and not yet finished
        self._partly_unfilled: set[tuple[str, str, int, int]] = set()
        self._ticks = 0

    def receiveMessage(self, message, sender):
        if isinstance(message, BackfillRequest):
            self._request(message)
        elif isinstance(message, WakeupMessage):
            self._on_tick()
        elif isinstance(message, BackfillSetup):
            self._configure(message, sender)
        elif isinstance(message, ActorExitRequest) and self._fetcher:
            self._fetcher.stopping.set()

    def _configure(self, setup: BackfillSetup, sender) -> None:
        first = self._setup is None
        self._setup, self._coordinator = setup, sender
        if first:
            self._fetcher = _Fetcher(setup)
            self._fetcher.start()
            self.wakeupAfter(seconds(TICK_SECONDS), TICK)

    def _request(self, request: BackfillRequest) -> None:
        key = (request.venue, request.symbol, request.first_id, request.last_id)
        if self._fetcher is None or key in self._open:
            return
        self._open.add(key)
        self._fetcher.gaps.put((GapFill(*key), time.monotonic()))
        log.info("backfilling %s %s ids %d to %d", request.venue, request.symbol, request.first_id, request.last_id,
                 extra={"event": "backfill_started", "venue": request.venue, "symbol": request.symbol,
                        "first_id": request.first_id, "last_id": request.last_id})

    def _on_tick(self) -> None:
        for item in self._fetcher.take():
            getattr(self, f"_on_{item[0]}")(*item[1:])
        self._metrics.set("k2_backfill_gaps_open", len(self._open))
        deltas = self._metrics.take()
        if deltas:
            self.send(self._setup.metrics, deltas)
        self._ticks += 1
        if self._ticks % HEARTBEAT_EVERY_TICKS == 0:
            report_alive(self, self._coordinator, self._parent_pid)
        self.wakeupAfter(seconds(TICK_SECONDS), TICK)

    def _on_request(self, status: str) -> None:
        self._metrics.inc("k2_backfill_requests_total", status)

    def _on_page(self, page: BackfilledTrades) -> None:
        self.send(self._setup.normaliser, page)

    def _on_limited(self, gap: GapFill, status: int, retry_after: float) -> None:
        level = logging.ERROR if status == 418 else logging.WARNING
        log.log(level, "trade history of %s refused with HTTP %d: waiting %.0f s as Retry-After says",
                gap.venue, status, retry_after,
                extra={"event": "backfill_rate_limited", "venue": gap.venue, "status": status, "retry_after": retry_after})

    def _on_unfilled(self, gap: GapFill, ids: tuple[int, int], reason: str, detail: str) -> None:
        first_id, last_id = ids
        log.error("cannot backfill %s %s ids %d to %d (%s): they stay missing; %s",
                  gap.venue, gap.symbol, first_id, last_id, reason, detail,
                  extra={"event": "backfill_failed", "venue": gap.venue, "symbol": gap.symbol, "first_id": first_id,
                         "last_id": last_id, "reason": reason, "detail": detail})
        self._metrics.inc("k2_backfill_unfilled_trades_total", gap.symbol, reason, amount=last_id - first_id + 1)
        self._partly_unfilled.add((gap.venue, gap.symbol, gap.first_id, gap.last_id))

    def _on_finished(self, gap: GapFill, requested_at: float) -> None:
        key = (gap.venue, gap.symbol, gap.first_id, gap.last_id)
        self._open.discard(key)
        if key in self._partly_unfilled:
            self._partly_unfilled.discard(key)
            return
        self._metrics.inc("k2_backfill_gaps_filled_total", gap.symbol)
        self._metrics.observe("k2_backfill_latency_seconds", [time.monotonic() - requested_at])
        log.info("backfilled %s %s ids %d to %d", gap.venue, gap.symbol, gap.first_id, gap.last_id,
                 extra={"event": "backfill_completed", "venue": gap.venue, "symbol": gap.symbol,
                        "first_id": gap.first_id, "last_id": gap.last_id})
