"""ConnectionActor: one websocket to one endpoint; where a trade enters the service.

A reader thread blocks on the socket (websocket-client answers every ping with the same
payload) and stamps each frame with its receive time. It wakes the actor through a pipe
that the actor watches with ThespianWatch, so the actor never blocks and batches form by
themselves: whatever arrived since the last wake-up goes to the Normaliser as one RawBatch.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import ssl
import threading
import time

import websocket
from thespian.actors import (
    Actor,
    ActorExitRequest,
    PoisonMessage,
    ThespianWatch,
    WakeupMessage,
    WatchMessage,
)

from k2actors.actors import TICK, note_poison, report_alive, seconds
from k2actors.clients import exchange_tls
from k2actors.core.binance import (
    SUBSCRIBE_INTERVAL_SECONDS,
    SubscriptionPlan,
    connection_plans,
)
from k2actors.core.reasons import reason_label
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import (
    Connect,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionSetup,
    PoisonedFrames,
    RawBatch,
    RawBatchTaken,
    ReadingStopped,
    Rotate,
    StopReading,
)

log = logging.getLogger("k2actors.connection")

MAX_BATCH_FRAMES = 5000
# RawBatches sent but not yet taken by the Normaliser. With the window full, frames wait
# here and leave together in the next batch: under load batches grow by themselves, and the
# actor never floods a mailbox (a flooded mailbox delays even its heartbeats).
WINDOW_BATCHES = 4
CONNECT_TIMEOUT_SECONDS = 10


class _Reader(threading.Thread):
    """Reads one websocket connection until it ends; hands frames over under a lock."""

    def __init__(self, plan: SubscriptionPlan, wake_fd: int, room: threading.Event, tls: ssl.SSLContext):
        super().__init__(name="ws-reader", daemon=True)
        self._plan = plan
        self._tls = tls
        self._room = room  # cleared while the actor's backlog is full: stop reading, let TCP push back
        self._wake_fd = wake_fd
        self._lock = threading.Lock()
        self._frames: list[tuple[int, bytes]] = []
        self._signalled = False
        self._socket: websocket.WebSocket | None = None
        self._close_reason: str | None = None
        self.opened = False
        self.opened_at = 0.0
        self.streamed = False  # at least one data frame arrived
        self.ended_reason: str | None = None
        self.last_frame_at = time.monotonic()

    def take(self) -> list[tuple[int, bytes]]:
        with self._lock:
            frames, self._frames, self._signalled = self._frames, [], False
            return frames

    def close(self, reason: str) -> None:
        self._close_reason = self._close_reason or reason
        ws = self._socket
        if ws is not None and ws.sock is not None:
            try:
                ws.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> None:
        try:
            ws = websocket.create_connection(
                self._plan.url, timeout=CONNECT_TIMEOUT_SECONDS, skip_utf8_validation=True, enable_multithread=True,
                sslopt={"context": self._tls},
            )
        except Exception as exc:  # every failure to connect is reported, whatever its type
            self._end(f"connect failed: {_describe(exc)}")
            return
        ws.settimeout(None)
        self._socket = ws
        if self._close_reason:
            ws.close()
            self._end(self._close_reason)
            return
        self.opened = True
        self.opened_at = self.last_frame_at = time.monotonic()
        self._wake()
        self._end(self._read(ws))

    def _read(self, ws: websocket.WebSocket) -> str:
        try:
            for index, message in enumerate(self._plan.subscribe_messages):
                if index:
                    time.sleep(SUBSCRIBE_INTERVAL_SECONDS)  # frames wait in the socket meanwhile
                ws.send(message)
            while True:
                while not self._room.wait(0.5):
                    if self._close_reason:
                        return self._close_reason
                opcode, frame = ws.recv_data_frame(True)
                received_us = time.time_ns() // 1000
                self.last_frame_at = time.monotonic()
                if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
                    self.streamed = self.streamed or not data.startswith(b'{"result"')  # a SUBSCRIBE reply is no data
                    with self._lock:
                        self._frames.append((received_us, data))
                        if not self._signalled:
                            self._signalled = True
                            os.write(self._wake_fd, b"f")
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    return self._close_reason or f"server closed the connection ({_close_code(frame.data)})"
        except Exception as exc:
            return self._close_reason or _describe(exc)
        finally:
            ws.shutdown()

    def _end(self, reason: str) -> None:
        self.ended_reason = reason
        self._wake()

    def _wake(self) -> None:
        os.write(self._wake_fd, b"e")


def _describe(exc: Exception) -> str:
    if isinstance(exc, websocket.WebSocketConnectionClosedException):
        return "connection lost without a close frame"
    return f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__


def _close_code(data: bytes) -> str:
    return f"code {int.from_bytes(data[:2], 'big')}" if len(data) >= 2 else "no code"


class _Link:
    """One websocket connection's worth of streams. During a make-before-break rotation two
    readers are live: the current one streams until its successor has delivered a frame,
    then retires."""

    def __init__(self, plan: SubscriptionPlan, wake_fd: int, room: threading.Event, tls: ssl.SSLContext):
        self._plan = plan
        self._wake_fd = wake_fd
        self._room = room
        self._tls = tls
        self.reader = self._open()
        self.successor: _Reader | None = None
        self.retiring: list[_Reader] = []
        self.rotation_reason = ""
        self._leftover: list[tuple[int, bytes]] = []  # frames of readers dropped since the last take

    def _open(self) -> _Reader:
        reader = _Reader(self._plan, self._wake_fd, self._room, self._tls)
        reader.start()
        return reader

    def readers(self) -> list[_Reader]:
        return [r for r in (*self.retiring, self.reader, self.successor) if r is not None]

    def take(self) -> list[tuple[int, bytes]]:
        """Oldest reader first, so that each batch keeps the order in which frames were sent."""
        frames, self._leftover = self._leftover, []
        for reader in self.readers():
            frames.extend(reader.take())
        return frames

    def _drop(self, reader: _Reader) -> None:
        reader.join()  # it set ended_reason as its last act: the join is immediate
        self._leftover.extend(reader.take())

    def rotate(self, reason: str) -> bool:
        if not self.reader.opened or self.reader.ended_reason is not None or self.successor is not None:
            return False
        self.rotation_reason = reason
        self.successor = self._open()
        return True

    def settle(self) -> str | None:
        """Retire what has ended; promote a successor that streams. Returns the rotation
        reason when a rotation completed just now."""
        for reader in [r for r in self.retiring if r.ended_reason is not None]:
            self._drop(reader)
            self.retiring.remove(reader)
        successor = self.successor
        if successor is not None and successor.streamed:
            self.reader.close(f"rotated: {self.rotation_reason}")
            self.retiring.append(self.reader)
            self.reader, self.successor = successor, None
            return self.rotation_reason
        if successor is not None and successor.ended_reason is not None:
            self._drop(successor)
            log.warning("replacement connection failed (%s); keeping the current one", successor.ended_reason,
                        extra={"event": "rotation_failed", "reason": successor.ended_reason})
            self.successor = None
        elif self.reader.ended_reason is not None and successor is not None:
            # The old connection went first (a serverShutdown does that): the successor takes over.
            self._drop(self.reader)
            self.reader, self.successor = successor, None
        return None

    def close(self, reason: str) -> None:
        for reader in self.readers():
            reader.close(reason)

    def join(self) -> None:
        for reader in self.readers():
            reader.join(timeout=CONNECT_TIMEOUT_SECONDS)


class ConnectionActor(Actor):
    """Owns the connections to one endpoint URL: one per MAX_STREAMS_PER_CONNECTION symbols.

    They stream, fail and are reported as one: if any of them ends, all are closed and the
    coordinator decides what to connect next. Every reader feeds the same RawBatch sequence;
    the Normaliser drops rotation overlaps as duplicates.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parent_pid = os.getppid()
        self._setup: ConnectionSetup | None = None
        self._coordinator = None
        self._links: list[_Link] = []
        self._reported_open = False
        self._connect_pending = False  # Connect overtook ConnectionSetup: delivery order is not guaranteed
        self._wake_r, self._wake_w = os.pipe()
        self._seq = 0
        self._taken = 0  # the last RawBatch seq the Normaliser has taken
        self._backlog: collections.deque[tuple[int, bytes]] = collections.deque()  # waiting for room in the window
        self._room = threading.Event()  # set while the backlog has room: the readers read
        self._room.set()
        self._metrics = MetricBuffer()

    def receiveMessage(self, message, sender):
        if isinstance(message, WatchMessage):
            os.read(self._wake_r, 65536)
            self._report_state()  # it forwards the frames too, once readers that ended are settled
        elif isinstance(message, WakeupMessage):
            self._on_tick()
        elif isinstance(message, RawBatchTaken):
            self._taken = max(self._taken, message.seq)
            self._forward_frames()
        elif isinstance(message, ConnectionSetup):
            first = self._setup is None
            if first or message.normaliser != self._setup.normaliser:
                self._taken = self._seq  # a new Normaliser: nothing is in flight to it
            self._setup, self._coordinator = message, sender
            if first:
                self.wakeupAfter(seconds(1), TICK)
            if self._connect_pending:
                self._connect()
        elif isinstance(message, Connect):
            self._connect()
        elif isinstance(message, Rotate):
            self._rotate(message.reason)
        elif isinstance(message, StopReading):
            self._stop_reading(sender)
        elif isinstance(message, PoisonMessage):
            self._on_poison(message)
        elif isinstance(message, ActorExitRequest):
            for link in self._links:
                link.close("actor exiting")
        return ThespianWatch([self._wake_r])

    def _connect(self) -> None:
        self._connect_pending = self._setup is None
        if self._connect_pending or self._links:
            return
        plans = connection_plans(self._setup.endpoint.url, self._setup.symbols, self._setup.streams)
        log.info(
            "connecting to %s (%d symbols, %d connection%s)",
            self._setup.endpoint.url, len(self._setup.symbols), len(plans), "s" if len(plans) > 1 else "",
            extra={"event": "connection_connecting", "endpoint": self._setup.endpoint.url},
        )
        self._reported_open = False
        tls = exchange_tls(self._setup.tls_ca_file, self._setup.tls_verify)
        self._links = [_Link(plan, self._wake_w, self._room, tls) for plan in plans]

    def _rotate(self, reason: str) -> None:
        if any([link.rotate(reason) for link in self._links]):
            log.info("replacing the connection to %s before closing it (%s)", self._setup.endpoint.url, reason,
                     extra={"event": "rotation_started", "endpoint": self._setup.endpoint.url, "reason": reason})

    def _forward_frames(self, everything: bool = False) -> None:
        backlog = self._backlog
        for link in self._links:
            backlog.extend(link.take())
        while backlog and (everything or self._seq - self._taken < WINDOW_BATCHES):
            self._seq += 1
            chunk = tuple(backlog.popleft() for _ in range(min(MAX_BATCH_FRAMES, len(backlog))))
            self.send(self._setup.normaliser, RawBatch(self._setup.endpoint.url, self._setup.endpoint.venue, self._seq, chunk))
        self._push_back()

    def _push_back(self) -> None:
        """Bounded memory without loss: while the Normaliser is this far behind, the readers stop
        reading and TCP slows the sender. (Binance drops a client that falls too far behind;
        that ends as a reconnect and a reported gap, never as unbounded memory.)"""
        limit, url = self._setup.max_buffered_frames, self._setup.endpoint.url
        if self._room.is_set() and len(self._backlog) >= limit:
            self._room.clear()
            log.warning("reading from %s paused: %d frames waiting for the normaliser", url, len(self._backlog),
                        extra={"event": "reading_paused", "endpoint": url, "waiting_frames": len(self._backlog)})
            self._metrics.inc("k2_binance_read_pauses_total", url)
        elif not self._room.is_set() and len(self._backlog) < limit // 2:
            now = time.monotonic()
            for link in self._links:
                for reader in link.readers():
                    reader.last_frame_at = now  # the silence was ours, not the exchange's
            self._room.set()
            log.warning("reading from %s resumed", url, extra={"event": "reading_resumed", "endpoint": url})

    def _report_state(self) -> None:
        url = self._setup.endpoint.url
        for link in self._links:
            rotated = link.settle()
            if rotated:
                log.info("connection to %s replaced (%s); closing the old one", url, rotated,
                         extra={"event": "rotation_completed", "endpoint": url, "reason": rotated})
                self._metrics.inc("k2_connection_rotations_total", url, rotated)
        self._forward_frames()  # what the readers settled above left behind
        if self._links and not self._reported_open and all(link.reader.opened for link in self._links):
            self._reported_open = True
            log.info("connected to %s", url, extra={"event": "connection_opened", "endpoint": url})
            self._metrics.set("k2_binance_connection_status", 1, url)
            self.send(self._coordinator, ConnectionOpened(url))
        ended = next((link.reader.ended_reason for link in self._links if link.reader.ended_reason is not None), None)
        if ended is not None:
            for link in self._links:
                link.close("another connection to the endpoint ended")
            for link in self._links:
                link.join()
            self._forward_frames()  # what arrived just before the end
            streamed = any(link.reader.streamed for link in self._links)
            log.warning("connection to %s ended: %s", url, ended,
                        extra={"event": "connection_ended", "endpoint": url, "reason": reason_label(ended), "detail": ended})
            self._metrics.set("k2_binance_connection_status", 0, url)
            self.send(self._coordinator, ConnectionClosed(url, ended, streamed))
            self._links = []
        self._flush_metrics()

    def _on_tick(self) -> None:
        if self._setup is not None:
            now = time.monotonic()
            for link in self._links:
                for reader in (link.reader, link.successor):
                    self._check_stale(reader, now)
            if any(link.reader.opened and now - link.reader.opened_at > self._setup.max_connection_age_seconds
                   for link in self._links):
                self._rotate("max_age")
            streaming = 1 if self._links and self._reported_open else 0
            self._metrics.set("k2_binance_connection_status", streaming, self._setup.endpoint.url)
            self._flush_metrics()
            report_alive(self, self._coordinator, self._parent_pid)
        self.wakeupAfter(seconds(1), TICK)

    def _check_stale(self, reader: _Reader | None, now: float) -> None:
        if reader and reader.opened and reader.ended_reason is None and self._room.is_set():
            silent_for = now - reader.last_frame_at
            if silent_for > self._setup.stale_timeout_seconds:
                reader.close(f"stale: no frame for {silent_for:.1f} s")

    def _stop_reading(self, sender) -> None:
        for link in self._links:
            link.close("service stopping")
        for link in self._links:
            link.join()
        self._forward_frames(everything=True)
        self._links = []
        if self._setup:
            self._metrics.set("k2_binance_connection_status", 0, self._setup.endpoint.url)
            self._flush_metrics()
        self.send(sender, ReadingStopped(self._setup.endpoint.url if self._setup else "", self._seq))

    def _on_poison(self, poison: PoisonMessage) -> None:
        note_poison(log, self._metrics, poison)
        batch = poison.poisonMessage
        if isinstance(batch, RawBatch):
            # Its frames still reach the DLQ, unparsed. If even that fails it comes back once
            # more as PoisonedFrames, and then is only counted and logged: never a loop.
            self.send(self._setup.normaliser, PoisonedFrames(batch.url, batch.frames, str(poison.details)[:200]))
        elif isinstance(batch, PoisonedFrames):
            log.error("%d frames from %s could not even be dead-lettered; they are lost", len(batch.frames), batch.url,
                      extra={"event": "frames_lost", "endpoint": batch.url, "count": len(batch.frames)})
        self._flush_metrics()

    def _flush_metrics(self) -> None:
        deltas = self._metrics.take()
        if deltas:
            self.send(self._setup.metrics, deltas)
