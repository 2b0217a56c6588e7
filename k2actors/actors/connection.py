"""ConnectionActor: one websocket per 1024 streams to one endpoint; where a trade enters.

A reader thread blocks on each socket (websocket-client answers every ping with the same
payload) and stamps each frame with its receive time, its connection's id (fresh for every
connection) and its number on that connection (1, 2, 3, ...): the raw record's identity. It
wakes the actor through a pipe the actor watches with ThespianWatch, so the actor never
blocks and batches form by themselves; frames that come one by one are held a moment
(HOLD_SECONDS) for those that follow. Batches go to the Normaliser on a data channel
(k2actors.channel). The flow window, the watchdog and rotation are k2actors.core.link's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time

import websocket
from thespian.actors import ActorAddress

from k2actors.actors.shell import Recipient, Supervised, WakePipe
from k2actors.clients import exchange_tls
from k2actors.core import coinbase, kraken
from k2actors.core.binance import connection_plans
from k2actors.core.link import (
    Drop,
    FlowWindow,
    Frame,
    ReadingPaused,
    Retire,
    Rotation,
    RotationCompleted,
    RotationFailed,
    silent_for,
)
from k2actors.core.payloads import PoisonedFrames, RawBatch
from k2actors.core.reasons import ConnectionEnd, EndReason
from k2actors.core.subscriptions import SubscriptionPlan, Subscriptions
from k2actors.messages import (
    ComponentStatus,
    Connect,
    ConnectionClosed,
    ConnectionSetup,
    ConnectionStreaming,
    RawBatchesConfirmed,
    RawBatchTaken,
    ReadingStopped,
    ReplaceConnection,
    ResubscribeBook,
    Rotate,
    StopReading,
    SubscriptionAnswer,
)
from k2actors.net import new_conn_id
from k2actors.receipts import Receipt

log = logging.getLogger("k2actors.connection")

# Requests sent after a connection's plan (Kraken's book resubscriptions) are numbered from
# here: past any plan's, so that an answer is never taken for a planned request's.
FIRST_LATER_REQUEST_ID = 1_000_000_000

CONNECT_TIMEOUT_SECONDS = 10
# A frame is handed to the actor once no other has followed it for this long, or this long
# after the first one waiting: trades that come one by one share a batch instead of each
# waking the three processes on their path (CPU a trade, bench --arrivals spread), at the
# cost of at most this much latency.
HOLD_SECONDS = 0.002


class _Reader(threading.Thread):
    """Reads one websocket connection until it ends; hands frames over under a lock."""

    def __init__(self, plan: SubscriptionPlan, conn_id: str, receipt: Receipt | None, wake_fd: int,
                 reading: threading.Event, tls: ssl.SSLContext):
        super().__init__(name="ws-reader", daemon=True)
        self.plan = plan
        self._tls = tls
        self._reading = reading  # cleared while the actor's backlog is full: let TCP push back
        self._wake_fd = wake_fd
        self._lock = threading.Lock()
        self._frames: list[Frame] = []
        self._signalled = False
        self._held_since: float | None = None  # when the first frame not yet signalled came (monotonic)
        self._socket: websocket.WebSocket | None = None
        self._closed_here: ConnectionEnd | None = None
        self.conn_id = conn_id
        self._received = 0  # data frames numbered so far
        self._receipt = receipt  # ... and counted there, for a service killed before Kafka has them
        self.opened = False
        self.opened_at = 0.0
        self.streamed = False
        self.ended: ConnectionEnd | None = None
        self.last_frame_at = time.monotonic()

    def take(self) -> list[Frame]:
        with self._lock:
            frames, self._frames, self._signalled, self._held_since = self._frames, [], False, None
            return frames

    def send(self, message: str) -> None:
        """A request on the open connection; if it cannot be sent, the connection is ending
        and its reader says so."""
        ws = self._socket
        if ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                ws.send(message)

    def close(self, end: ConnectionEnd) -> None:
        self._closed_here = self._closed_here or end
        ws = self._socket
        if ws is not None and ws.sock is not None:
            with contextlib.suppress(OSError):
                ws.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        try:
            ws = websocket.create_connection(
                self.plan.url, timeout=CONNECT_TIMEOUT_SECONDS, skip_utf8_validation=True, enable_multithread=True,
                sslopt={"context": self._tls},
            )
        except Exception as exc:  # every failure to connect is reported, whatever its type
            self._end(ConnectionEnd(EndReason.CONNECT_FAILED, f"connect failed: {_describe(exc)}"))
            return
        ws.settimeout(None)
        self._socket = ws
        if self._closed_here:
            ws.close()
            self._end(self._closed_here)
            return
        self.opened = True
        self.opened_at = self.last_frame_at = time.monotonic()
        self._wake()
        self._end(self._read(ws))

    def _read(self, ws: websocket.WebSocket) -> ConnectionEnd:
        try:
            for index, (_, message) in enumerate(self.plan.requests):
                if index:
                    time.sleep(self.plan.interval)  # frames wait in the socket meanwhile
                ws.send(message)
            while True:
                if self._held_since is not None:  # (reading paused: at once, not after the pause)
                    self._hold(ws, self._held_since + HOLD_SECONDS - time.monotonic() if self._reading.is_set() else 0.0)
                while not self._reading.wait(0.5):
                    if self._closed_here:
                        return self._closed_here
                opcode, frame = ws.recv_data_frame(True)
                received_ns = time.time_ns()
                self.last_frame_at = time.monotonic()
                if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
                    self.streamed = self.streamed or not data.startswith(_ANSWERS)  # an answer to a request is no data
                    self._received += 1
                    if self._receipt is not None:
                        self._receipt.received(self._received)
                    with self._lock:
                        self._frames.append((received_ns, self.conn_id, self._received, data))
                        if not self._signalled and self._held_since is None:
                            self._held_since = self.last_frame_at
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    return self._unless_closed_here(EndReason.SERVER_CLOSED, f"server closed the connection ({_close_code(frame.data)})")
        except websocket.WebSocketConnectionClosedException:
            return self._unless_closed_here(EndReason.CONNECTION_LOST, "connection lost without a close frame")
        except Exception as exc:
            return self._unless_closed_here(EndReason.OTHER, _describe(exc))
        finally:
            ws.shutdown()

    def _hold(self, ws: websocket.WebSocket, seconds: float) -> None:
        """Wake the actor for the frames waiting, unless another begins to arrive within
        `seconds`: bytes TLS has decrypted already, or the socket's. (websocket-client reads
        a frame's exact length, so it holds none back.)"""
        sock = ws.sock
        if seconds > 0 and sock is not None and (isinstance(sock, ssl.SSLSocket) and sock.pending()
                                                 or select.select([sock], [], [], seconds)[0]):
            return
        with self._lock:
            self._held_since = None
            if not self._signalled:
                self._signalled = True
                os.write(self._wake_fd, b"f")

    def _unless_closed_here(self, reason: EndReason, detail: str) -> ConnectionEnd:
        """Closing a socket here makes it fail on the reader's side: the closer's reason stands."""
        return self._closed_here or ConnectionEnd(reason, detail)

    def _end(self, end: ConnectionEnd) -> None:
        self.ended = end
        self._wake()

    def _wake(self) -> None:
        os.write(self._wake_fd, b"e")


# How Binance's answers to requests begin (core.binance reads them whole): success, and the
# two shapes of a refusal. (Kraken's first frame, its status, counts as data: it comes when
# Kraken is up.)
_ANSWERS = (b'{"result"', b'{"code"', b'{"error"')


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _close_code(data: bytes) -> str:
    return f"code {int.from_bytes(data[:2], 'big')}" if len(data) >= 2 else "no code"


class ConnectionActor(Supervised[ConnectionSetup]):
    """Owns the connections to one endpoint URL: one per MAX_STREAMS_PER_CONNECTION symbols.

    They stream, fail and are reported as one: if any of them ends, all are closed and the
    coordinator decides what to connect next. Every reader feeds the same RawBatch sequence;
    the Normaliser drops rotation overlaps as duplicates.
    """

    SETUP = ConnectionSetup

    def __init__(self) -> None:
        super().__init__()
        self._links: list[Rotation[_Reader]] = []
        self._leftover: list[Frame] = []  # frames of readers dropped since the last take
        self._reported_open = False
        self._reported_streaming = False
        self._wake = WakePipe()  # the readers' frames and ends wake the actor
        self._flow = FlowWindow(0)
        self._plans: list[SubscriptionPlan] = []  # one per link
        self._subscriptions = Subscriptions([])  # what the plans' SUBSCRIBE requests were answered
        self._subscriptions_status: tuple[bool, str] | None = None  # as last reported
        self._reading = threading.Event()  # set while the readers may read
        self._reading.set()
        self._tls: ssl.SSLContext | None = None  # from the setup
        self._receipts: dict[str, Receipt] = {}  # per conn_id, until Kafka has all its frames and it has ended
        self._later_request_id = FIRST_LATER_REQUEST_ID  # the last id of a request sent after the plan's

    @property
    def _url(self) -> str:
        return self.setup.endpoint.url

    def metrics_address(self) -> ActorAddress:
        return self.setup.metrics

    def configure(self, previous: ConnectionSetup | None) -> None:
        if previous is None:
            self._flow = FlowWindow(self.setup.max_buffered_frames)
            return
        if previous.normaliser != self.setup.normaliser:
            self.forget_channel(previous.normaliser)
            self._flow.new_receiver()
        if previous.symbols != self.setup.symbols and self._links:
            self._resubscribe()

    def _resubscribe(self) -> None:
        """Cluster mode: the instance's symbols changed. The connections are replaced make
        before break, so the symbols that stay lose nothing; with no symbols left they close."""
        setup = self.setup
        if not setup.symbols:
            log.info("no symbols to carry from %s: closing its connections", self._url,
                     extra={"event": "connection_unneeded", "endpoint": self._url})
            self._close_all("no symbols to carry")
            self._forward_frames()
            self._drop_links()
            self._reported_streaming = False
            return
        plans = self._planned()
        log.info("resubscribing %s to %d symbols", self._url, len(setup.symbols),
                 extra={"event": "connection_resubscribing", "endpoint": self._url, "symbols": len(setup.symbols)})
        if len(plans) != len(self._links):  # more or fewer connections: they are all replaced
            self._set_plans(plans)
            self._replace_all("resubscribing to another number of connections")
            return
        for index, (link, plan) in enumerate(zip(self._links, plans, strict=True)):
            if link.successor is not None:  # a replacement under way (it has not streamed): it is replaced too
                link.successor.close(ConnectionEnd(EndReason.CLOSED_HERE, "resubscribing"))
                link.successor = None
            if link.can_rotate():
                link.begin(self._open(plan), "resubscribe")
            else:  # not open yet (or just ended): it is simply replaced, what it read kept
                link.current.close(ConnectionEnd(EndReason.CLOSED_HERE, "resubscribing"))
                self._leftover.extend(link.current.take())
                self._links[index] = Rotation(self._open(plan))
        self._set_plans(plans)

    def watched(self) -> list[int]:
        return [self._wake.read_fd]

    def replies_wanted(self) -> bool:
        # RawBatchTaken matters only when frames wait for room in the window, and
        # RawBatchesConfirmed only while reading is paused (no frame will wake the actor until
        # it resumes); otherwise the answers are read when frames next wake the actor, a
        # wake-up a batch saved.
        return self._flow.waiting > 0 or not self._flow.reading

    def on_readable(self, fds: set[int]) -> None:
        self._wake.drain()
        if self._setup is not None:
            self._settle()

    def on_channel_reset(self) -> None:
        self._flow.new_receiver()  # what was in flight goes again, on a new channel
        self._forward_frames()

    def _drop_links(self) -> None:
        """Every connection is closed: what their requests were answered no longer stands."""
        self._links = []
        self._subscriptions = Subscriptions([])
        self._report_subscriptions()

    def _planned(self) -> list[SubscriptionPlan]:
        setup = self.setup
        if setup.endpoint.venue == kraken.VENUE:
            return [kraken.connection_plan(self._url, setup.symbols, setup.streams, setup.book_depth)]
        if setup.endpoint.venue == coinbase.VENUE:
            return coinbase.connection_plans(self._url, setup.symbols, setup.streams)
        return connection_plans(self._url, setup.symbols, setup.streams)

    def _set_plans(self, plans: list[SubscriptionPlan]) -> None:
        """The connections' plans; their requests are asked anew, and answered afresh."""
        self._plans = plans
        self._subscriptions = Subscriptions(plans)
        self._report_subscriptions()

    def receiveMsg_SubscriptionAnswer(self, message: SubscriptionAnswer, sender: Recipient) -> None:
        if message.refusal is None:
            self._subscriptions.answered(message.request_id)
        else:
            code, text = message.refusal
            delay = self._subscriptions.refused(message.request_id, code, text, time.monotonic())
            if delay is not None:
                log.warning("request %s to %s refused (code %d, %r); asking again in %.1f s", message.request_id, self._url,
                            code, text, delay, extra={"event": "subscription_retry", "endpoint": self._url,
                                                      "request_id": message.request_id, "seconds": round(delay, 1)})
        self._report_subscriptions()

    def _report_subscriptions(self) -> None:
        status = self._subscriptions.status()
        if status != self._subscriptions_status and self._setup is not None:
            self._subscriptions_status = status
            self.send(self.setup.metrics, ComponentStatus(f"subscriptions {self._url}", *status))

    def receiveMsg_ReplaceConnection(self, message: ReplaceConnection, sender: Recipient) -> None:
        """Coinbase: fresh book snapshots for a connection that lost a frame, from its successor
        (a connection gone since has been replaced already)."""
        self._rotate(f"connection {message.conn_id} lost a frame: its books need fresh snapshots", message.conn_id)

    def receiveMsg_ResubscribeBook(self, message: ResubscribeBook, sender: Recipient) -> None:
        """Kraken: a fresh snapshot of a book that failed its checksum, on its own connection
        (a connection gone since has subscribed anew)."""
        reader = next((reader for link in self._links for reader in link.readers() if reader.conn_id == message.conn_id), None)
        if reader is None or reader.ended is not None:
            return
        requests = kraken.resubscribe_book(message.pair, kraken.subscribed_depth(self.setup.book_depth), self._later_request_id + 1)
        self._later_request_id = requests[-1][0]
        for _, request in requests:
            reader.send(request)

    def receiveMsg_RawBatchTaken(self, message: RawBatchTaken, sender: Recipient) -> None:
        self._flow.taken(message.seq)
        self._forward_frames()

    def receiveMsg_RawBatchesConfirmed(self, message: RawBatchesConfirmed, sender: Recipient) -> None:
        for conn_id, conn_msg_seq in self._flow.confirmed(message.seq).items():
            receipt = self._receipts.get(conn_id)
            if receipt is not None:
                receipt.confirmed(conn_msg_seq)
        self._close_settled_receipts()
        self._forward_frames()  # reading may resume

    def receiveMsg_Connect(self, message: Connect, sender: ActorAddress) -> None:
        if self._links:
            return
        setup = self.setup
        plans = self._planned()
        log.info("connecting to %s (%d symbols, %d connection%s)", self._url, len(setup.symbols), len(plans),
                 "s" if len(plans) > 1 else "", extra={"event": "connection_connecting", "endpoint": self._url})
        self._reported_open = self._reported_streaming = False
        self._set_plans(plans)
        self._links = [Rotation(self._open(plan)) for plan in plans]

    def _open(self, plan: SubscriptionPlan) -> _Reader:
        setup, conn_id = self.setup, new_conn_id()
        if self._tls is None:
            self._tls = exchange_tls(setup.tls_ca_file, setup.tls_verify)
        receipt = None
        if setup.receipts_dir is not None:
            receipt = self._receipts[conn_id] = Receipt(setup.receipts_dir, setup.endpoint.venue, self._url, conn_id)
        reader = _Reader(plan, conn_id, receipt, self._wake.write_fd, self._reading, self._tls)
        reader.start()
        return reader

    def _close_settled_receipts(self) -> None:
        """A connection's receipt goes once it has ended and Kafka has every frame it counts."""
        live = {reader.conn_id for link in self._links for reader in link.readers()}
        for conn_id, receipt in list(self._receipts.items()):
            if conn_id not in live and receipt.settled:
                receipt.close()
                del self._receipts[conn_id]

    def receiveMsg_Rotate(self, message: Rotate, sender: ActorAddress) -> None:
        self._rotate(message.reason)

    def _rotate(self, reason: str, conn_id: str | None = None) -> None:
        """Every connection replaced, or only the one `conn_id` names while it lives."""
        rotating = [(link, plan) for link, plan in zip(self._links, self._plans, strict=True) if link.can_rotate()
                    and (conn_id is None or any(r.conn_id == conn_id and r.ended is None for r in link.readers()))]
        for link, plan in rotating:
            link.begin(self._open(plan), reason)
        if rotating:
            log.info("replacing the connection to %s before closing it (%s)", self._url, reason,
                     extra={"event": "rotation_started", "endpoint": self._url, "reason": reason})

    def receiveMsg_StopReading(self, message: StopReading, sender: ActorAddress) -> None:
        self._close_all("service stopping")
        self._forward_frames(everything=True)
        for receipt in self._receipts.values():
            receipt.handed_on()
        self._drop_links()
        self.metrics.set("k2_binance_connection_status", 0, self._url)
        self.send(sender, ReadingStopped(self._url, self._flow.seq))

    def on_exit(self) -> None:
        for link in self._links:
            for reader in link.readers():
                reader.close(ConnectionEnd(EndReason.CLOSED_HERE, "actor exiting"))
        for receipt in self._receipts.values():
            receipt.close()  # one with frames Kafka has not confirmed stays, for the producer to settle

    def on_poison(self, message: object, detail: str) -> None:
        if isinstance(message, RawBatch):
            # Its frames still reach the DLQ, unparsed. If even that fails it comes back once
            # more as PoisonedFrames, and then is only counted and logged: never a loop.
            self.deliver(self.setup.normaliser, PoisonedFrames(message.url, message.venue, message.frames, detail))
        elif isinstance(message, PoisonedFrames):
            log.error("%d frames from %s could not even be dead-lettered; they are lost", len(message.frames), message.url,
                      extra={"event": "frames_lost", "endpoint": message.url, "count": len(message.frames)})

    def on_tick(self, now: float) -> None:
        setup = self.setup
        for resend in self._subscriptions.due(now):
            if resend.link < len(self._links):  # else the connections are being replaced: their requests go anew
                log.info("asking %s again for request %d", self._url, resend.request_id,
                         extra={"event": "subscription_resent", "endpoint": self._url, "request_id": resend.request_id})
                self._links[resend.link].current.send(resend.message)
        for link in self._links:
            for reader in link.readers():
                silence = silent_for(reader, now, setup.stale_timeout_seconds) if self._flow.reading else None
                if silence is not None:
                    reader.close(ConnectionEnd(EndReason.STALE, f"stale: no frame for {silence:.1f} s"))
        if any(link.current.opened and now - link.current.opened_at > setup.max_connection_age_seconds for link in self._links):
            self._rotate("max_age")
        self.metrics.set("k2_binance_connection_status", 1 if self._links and self._reported_streaming else 0, self._url)
        self.metrics.set("k2_connection_unconfirmed_frames", self._flow.unconfirmed, self._url)
        self._close_settled_receipts()  # of connections that ended with nothing unconfirmed

    # --- what the readers reported ---

    def _settle(self) -> None:
        for link in self._links:
            for event in link.settle():
                if isinstance(event, Retire):
                    event.reader.close(event.end)
                elif isinstance(event, Drop):
                    event.reader.join()  # it set `ended` as its last act: the join is immediate
                    self._leftover.extend(event.reader.take())
                elif isinstance(event, RotationCompleted):
                    log.info("connection to %s replaced (%s); closing the old one", self._url, event.reason,
                             extra={"event": "rotation_completed", "endpoint": self._url, "reason": event.reason})
                    self.metrics.inc("k2_connection_rotations_total", self._url, event.reason)
                elif isinstance(event, RotationFailed):
                    log.warning("replacement connection failed (%s); keeping the current one", event.end,
                                extra={"event": "rotation_failed", "reason": event.end.reason.value})
        self._forward_frames()
        if self._links and any(link.successor is None and link.current.ended is None and link.current.plan != plan
                               for link, plan in zip(self._links, self._plans, strict=True)):
            self._replace_all("a resubscribing connection failed")  # the subscription must not stay stale
            return
        if self._links and not self._reported_open and all(link.current.opened for link in self._links):
            self._reported_open = True
            log.info("connected to %s", self._url, extra={"event": "connection_opened", "endpoint": self._url})
        if self._links and not self._reported_streaming and any(link.current.streamed for link in self._links):
            self._reported_streaming = True
            self.metrics.set("k2_binance_connection_status", 1, self._url)
            self.send(self.coordinator, ConnectionStreaming(self._url))
        end = next((link.current.ended for link in self._links if link.current.ended is not None), None)
        if end is not None:
            self._close_all("another connection to the endpoint ended")
            self._forward_frames()  # what arrived just before the end
            streamed = any(link.current.streamed for link in self._links)
            last_frame_at = max((link.current.last_frame_at for link in self._links if link.current.opened), default=None)
            log.warning("connection to %s ended: %s", self._url, end, extra={
                "event": "connection_ended", "endpoint": self._url, "reason": end.reason.value, "detail": end.detail})
            self.metrics.set("k2_binance_connection_status", 0, self._url)
            self.send(self.coordinator, ConnectionClosed(self._url, end.reason, end.detail, streamed, last_frame_at))
            self._drop_links()
        self.flush_metrics()

    def _replace_all(self, detail: str) -> None:
        """Close every connection and report it: the coordinator connects again at once."""
        streamed = any(link.current.streamed for link in self._links)
        last_frame_at = max((link.current.last_frame_at for link in self._links if link.current.opened), default=None)
        self._close_all(detail)
        self._forward_frames()
        self._drop_links()
        self.metrics.set("k2_binance_connection_status", 0, self._url)
        self.send(self.coordinator, ConnectionClosed(self._url, EndReason.CLOSED_HERE, detail, streamed, last_frame_at))

    def _close_all(self, detail: str) -> None:
        readers = [reader for link in self._links for reader in link.readers()]
        for reader in readers:
            reader.close(ConnectionEnd(EndReason.CLOSED_HERE, detail))
        for reader in readers:
            reader.join(timeout=CONNECT_TIMEOUT_SECONDS)

    def _forward_frames(self, everything: bool = False) -> None:
        frames, self._leftover = self._leftover, []
        for link in self._links:
            for reader in link.readers():
                frames.extend(reader.take())
        self._flow.add(frames)
        setup = self.setup
        for seq, chunk in self._flow.release(everything):
            self.deliver(setup.normaliser, RawBatch(self._url, setup.endpoint.venue, seq, chunk))
        change = self._flow.reading_change()
        if isinstance(change, ReadingPaused):
            self._reading.clear()
            log.warning("reading from %s paused: %d frames not yet in Kafka", self._url, change.waiting_frames,
                        extra={"event": "reading_paused", "endpoint": self._url, "waiting_frames": change.waiting_frames})
            self.metrics.inc("k2_binance_read_pauses_total", self._url)
        elif change is not None:
            now = time.monotonic()
            for link in self._links:
                for reader in link.readers():
                    reader.last_frame_at = now  # the silence was ours, not the exchange's
            self._reading.set()
            log.warning("reading from %s resumed", self._url, extra={"event": "reading_resumed", "endpoint": self._url})
