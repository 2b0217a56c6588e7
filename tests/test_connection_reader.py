"""A connection's reader thread against a real socket, plain and TLS: frames that arrive
together wake the actor once and are taken together; a lone frame wakes it without waiting
for company."""

from __future__ import annotations

import base64
import hashlib
import os
import select
import socket
import ssl
import threading

import pytest
import trustme

from k2actors.actors.connection import _Reader
from k2actors.core.reasons import ConnectionEnd, EndReason
from k2actors.core.subscriptions import SubscriptionPlan

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def text_frame(payload: bytes) -> bytes:
    """A server's text frame (unmasked), short enough for the one-byte length."""
    assert len(payload) < 126
    return bytes([0x81, len(payload)]) + payload


class OneConnectionServer:
    """A websocket server for one connection that writes what it is given in one write, so
    that the frames reach the reader together (in one TLS record, with TLS)."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{self._listener.getsockname()[1]}/stream"
        self._tls = tls
        self._connection: socket.socket | None = None
        self._accepted = threading.Thread(target=self._accept, daemon=True)
        self._accepted.start()

    def _accept(self) -> None:
        connection, _ = self._listener.accept()
        if self._tls is not None:
            connection = self._tls.wrap_socket(connection, server_side=True)
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(4096)
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())
        connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self._connection = connection

    def send(self, *payloads: bytes) -> None:
        self._accepted.join(10)
        assert self._connection is not None
        self._connection.sendall(b"".join(map(text_frame, payloads)))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._listener.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def woken(fd: int) -> bytes:
    """What the reader wrote to the actor's wake pipe, once it has written."""
    assert select.select([fd], [], [], 10)[0], "the reader never woke the actor"
    return os.read(fd, 100)


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_frames_that_arrive_together_are_taken_together_and_a_lone_frame_is_not_kept_waiting(tls: bool, ca: trustme.CA):
    server_tls = None
    if tls:
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    server = OneConnectionServer(server_tls)
    wake_read, wake_write = os.pipe()
    reading = threading.Event()
    reading.set()
    reader = _Reader(SubscriptionPlan(server.url, (), 0.0), "conn-1", None, wake_write, reading, client_tls)
    reader.start()
    try:
        assert woken(wake_read) == b"e" and reader.opened  # (the wake that says it is open)
        server.send(b"1", b"2", b"3")
        assert woken(wake_read) == b"f"
        assert [(seq, data) for _, _, seq, data in reader.take()] == [(1, b"1"), (2, b"2"), (3, b"3")]
        server.send(b"4")
        assert woken(wake_read) == b"f"
        assert [(seq, data) for _, _, seq, data in reader.take()] == [(4, b"4")]
    finally:
        reader.close(ConnectionEnd(EndReason.CLOSED_HERE, "test over"))
        reader.join(10)
        server.close()
        os.close(wake_read)
        os.close(wake_write)
    assert reader.ended == ConnectionEnd(EndReason.CLOSED_HERE, "test over")
