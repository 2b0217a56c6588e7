"""ConnectionActor: one websocket to one endpoint; where a trade enters the service.

A reader thread blocks on the socket (websocket-client answers every ping with the same
payload) and stamps each frame with its receive time. It wakes the actor through a pipe
that the actor watches with ThespianWatch, so the actor never blocks and batches form by
themselves: whatever arrived since the last wake-up goes to the Normaliser as one RawBatch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import websocket
from thespian.actors import Actor, ActorExitRequest, ThespianWatch, WakeupMessage, WatchMessage

from k2actors.actors import TICK, report_alive, seconds
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import (
    Connect,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionSetup,
    RawBatch,
    ReadingStopped,
    Rotate,
    StopReading,
)

log = logging.getLogger("k2actors.connection")

MAX_BATCH_FRAMES = 2000
CONNECT_TIMEOUT_SECONDS = 10


def stream_url(base_url: str, symbols: tuple[str, ...]) -> str:
    return f"{base_url}?streams=" + "/".join(f"{symbol.lower()}@trade" for symbol in symbols)


class _Reader(threading.Thread):
    """Reads one websocket connection until it ends; hands frames over under a lock."""

    def __init__(self, url: str, wake_fd: int):
        super().__init__(name="ws-reader", daemon=True)
        self._url = url
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
                self._url, timeout=CONNECT_TIMEOUT_SECONDS, skip_utf8_validation=True, enable_multithread=True
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
            while True:
                opcode, frame = ws.recv_data_frame(True)
                received_us = time.time_ns() // 1000
                self.last_frame_at = time.monotonic()
                if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
                    self.streamed = True
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


class ConnectionActor(Actor):
    """Owns the connection to one endpoint URL.

    During a make-before-break rotation two readers are live on the same URL: the current
    one keeps streaming until its successor has delivered a frame, then retires. Both feed
    the same RawBatch sequence; the Normaliser drops the overlap as duplicates.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parent_pid = os.getppid()
        self._setup: ConnectionSetup | None = None
        self._coordinator = None
        self._reader: _Reader | None = None
        self._successor: _Reader | None = None
        self._retiring: list[_Reader] = []
        self._rotation_reason = ""
        self._reported_open = False
        self._connect_pending = False  # Connect overtook ConnectionSetup: delivery order is not guaranteed
        self._wake_r, self._wake_w = os.pipe()
        self._seq = 0
        self._metrics = MetricBuffer()

    def receiveMessage(self, message, sender):
        if isinstance(message, WatchMessage):
            os.read(self._wake_r, 65536)
            self._forward_frames()
            self._report_state()
        elif isinstance(message, WakeupMessage):
            self._on_tick()
        elif isinstance(message, ConnectionSetup):
            first = self._setup is None
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
        elif isinstance(message, ActorExitRequest):
            for reader in self._readers():
                reader.close("actor exiting")
        return ThespianWatch([self._wake_r])

    def _readers(self) -> list[_Reader]:
        """Oldest first, so that each batch keeps the order in which frames were sent."""
        return [r for r in (*self._retiring, self._reader, self._successor) if r is not None]

    def _open_reader(self) -> _Reader:
        reader = _Reader(stream_url(self._setup.endpoint.url, self._setup.symbols), self._wake_w)
        reader.start()
        return reader

    def _connect(self) -> None:
        self._connect_pending = self._setup is None
        if self._connect_pending or (self._reader and self._reader.is_alive()):
            return
        log.info("connecting to %s (%d symbols)", self._setup.endpoint.url, len(self._setup.symbols))
        self._reported_open = False
        self._reader = self._open_reader()

    def _rotate(self, reason: str) -> None:
        if self._reader is None or not self._reader.opened or self._successor is not None:
            return
        log.info("replacing the connection to %s before closing it (%s)", self._setup.endpoint.url, reason)
        self._rotation_reason = reason
        self._successor = self._open_reader()

    def _forward_frames(self) -> None:
        frames = [frame for reader in self._readers() for frame in reader.take()]
        for start in range(0, len(frames), MAX_BATCH_FRAMES):
            self._seq += 1
            chunk = tuple(frames[start : start + MAX_BATCH_FRAMES])
            self.send(self._setup.normaliser, RawBatch(self._setup.endpoint.url, self._setup.endpoint.venue, self._seq, chunk))

    def _report_state(self) -> None:
        url = self._setup.endpoint.url
        for reader in [r for r in self._retiring if r.ended_reason is not None]:
            reader.join()  # it set ended_reason as its last act: the join is immediate
            self._retiring.remove(reader)
            self._forward_frames()
        successor = self._successor
        if successor is not None and successor.streamed:
            log.info("connection to %s replaced (%s); closing the old one", url, self._rotation_reason)
            self._metrics.inc("k2_connection_rotations_total", url, self._rotation_reason)
            self._reader.close(f"rotated: {self._rotation_reason}")
            self._retiring.append(self._reader)
            self._reader, self._successor = successor, None
        elif successor is not None and successor.ended_reason is not None:
            successor.join()
            log.warning("replacement connection to %s failed (%s); keeping the current one", url, successor.ended_reason)
            self._successor = None
        reader = self._reader
        if reader is None:
            return
        if reader.opened and not self._reported_open:
            self._reported_open = True
            log.info("connected to %s", url)
            self._metrics.set("k2_binance_connection_status", 1, url)
            self.send(self._coordinator, ConnectionOpened(url))
        if reader.ended_reason is not None:
            reader.join()
            self._forward_frames()  # what arrived just before the end
            log.warning("connection to %s ended: %s", url, reader.ended_reason)
            if self._successor is not None:
                # The old connection went first (a serverShutdown does that): the successor takes over.
                self._reader, self._successor = self._successor, None
            else:
                self._metrics.set("k2_binance_connection_status", 0, url)
                self.send(self._coordinator, ConnectionClosed(url, reader.ended_reason, reader.streamed))
                self._reader = None
        self._flush_metrics()

    def _on_tick(self) -> None:
        if self._setup is not None:
            now = time.monotonic()
            for reader in (self._reader, self._successor):
                self._check_stale(reader, now)
            reader = self._reader
            if reader and reader.opened and now - reader.opened_at > self._setup.max_connection_age_seconds:
                self._rotate("max_age")
            streaming = 1 if reader is not None and self._reported_open else 0
            self._metrics.set("k2_binance_connection_status", streaming, self._setup.endpoint.url)
            self._flush_metrics()
            report_alive(self, self._coordinator, self._parent_pid)
        self.wakeupAfter(seconds(1), TICK)

    def _check_stale(self, reader: _Reader | None, now: float) -> None:
        if reader and reader.opened and reader.ended_reason is None:
            silent_for = now - reader.last_frame_at
            if silent_for > self._setup.stale_timeout_seconds:
                reader.close(f"stale: no frame for {silent_for:.1f} s")

    def _stop_reading(self, sender) -> None:
        readers = self._readers()
        for reader in readers:
            reader.close("service stopping")
        for reader in readers:
            reader.join(timeout=CONNECT_TIMEOUT_SECONDS)
        self._forward_frames()
        self._reader, self._successor, self._retiring = None, None, []
        if self._setup:
            self._metrics.set("k2_binance_connection_status", 0, self._setup.endpoint.url)
            self._flush_metrics()
        self.send(sender, ReadingStopped(self._setup.endpoint.url if self._setup else "", self._seq))

    def _flush_metrics(self) -> None:
        deltas = self._metrics.take()
        if deltas:
            self.send(self._setup.metrics, deltas)
