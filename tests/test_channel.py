"""k2actors.channel on real Unix sockets: the data path between actors never blocks its
sender, waits for a receiver that is not listening yet, carries messages of any size whole
and in order both ways, closes when its receiver is gone, and admits only the service's own
processes, with messages up to a bound."""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Iterator

import pytest
from thespian.actors import ActorAddress

from k2actors.channel import Channel, Inbox, inbox_name
from k2actors.core.framing import MAX_MESSAGE_BYTES, encode
from k2actors.core.payloads import RawBatch
from k2actors.messages import ChannelReset, RawBatchTaken

_numbers = itertools.count()


def address() -> ActorAddress:
    return ActorAddress(f"test-{os.getpid()}-{next(_numbers)}")


def batch(seq: int, frames: int = 3, size: int = 100) -> RawBatch:
    return RawBatch("ws://exchange.example/stream", "BINANCE", seq, tuple((i, "c", i + 1, bytes([i % 256]) * size) for i in range(frames)))


def inbox_name_of(inbox: Inbox) -> str:
    return inbox._socket.getsockname()


def accept_one(inbox: Inbox) -> Channel:
    [channel] = inbox.accept()
    return channel


@pytest.fixture
def link() -> Iterator[tuple[Inbox, Channel]]:
    """A receiver's inbox, listening, and a sender's channel to it, not yet connected."""
    receiver = address()
    inbox = Inbox(receiver)
    channel = Channel(None, inbox_name(receiver))
    yield inbox, channel
    inbox.close()
    channel.close()


def test_messages_sent_before_the_receiver_listens_arrive_once_it_does():
    receiver = address()
    channel = Channel(None, inbox_name(receiver))
    channel.send(batch(1))
    channel.send(batch(2))
    assert channel.fileno() is None and not channel.full  # not connected: nothing to watch yet
    inbox = Inbox(receiver)
    try:
        channel.flush()
        assert accept_one(inbox).receive() == [batch(1), batch(2)]
    finally:
        inbox.close()
        channel.close()


def test_a_message_larger_than_the_socket_takes_never_blocks_the_sender_and_arrives_whole(link):
    inbox, channel = link
    big = batch(1, frames=200, size=50_000)  # 10 MB: far more than a Unix socket buffers
    channel.send(big)  # returns at once: what the socket did not take waits in the channel
    assert channel.full
    channel.send(batch(2))
    incoming = accept_one(inbox)
    received: list[object] = []
    for _ in range(10_000):
        received.extend(incoming.receive())
        channel.flush()
        if len(received) == 2:
            break
    assert received == [big, batch(2)]
    assert not channel.full


def test_answers_come_back_on_the_channel_the_messages_came_on(link):
    inbox, channel = link
    channel.send(batch(5))
    incoming = accept_one(inbox)
    [message] = incoming.receive()
    incoming.send(RawBatchTaken(message.seq))
    assert channel.receive() == [RawBatchTaken(5)]
    assert channel.receive() == []  # nothing more, and no wait for it


def test_a_channel_whose_receiver_is_gone_closes_and_takes_nothing_more(link):
    inbox, channel = link
    channel.send(batch(1))
    accept_one(inbox).close()
    inbox.close()
    assert channel.receive() == []
    assert channel.closed and channel.fileno() is None
    channel.send(batch(2))  # dropped: the sender resends to the receiver's successor
    assert not channel.full


def test_each_receiver_has_an_inbox_of_its_own(link):
    inbox, _ = link
    other = address()
    other_inbox = Inbox(other)
    channel = Channel(None, inbox_name(other))
    try:
        channel.send(batch(9))
        assert inbox.accept() == []
        assert accept_one(other_inbox).receive() == [batch(9)]
    finally:
        other_inbox.close()
        channel.close()


def test_a_message_over_the_bound_resets_the_channel_and_the_sender_is_told(link):
    inbox, channel = link
    channel.send(batch(1))
    incoming = accept_one(inbox)
    assert incoming.receive() == [batch(1)]
    assert (incoming.peer_pid, incoming.peer_uid) == (os.getpid(), os.getuid())
    channel._socket.send(struct.pack("!I", MAX_MESSAGE_BYTES + 1))  # a length alone: no body is ever buffered
    assert incoming.receive() == []
    refusal = incoming.take_refusal()
    assert refusal is not None and refusal.reason == "oversized" and incoming.closed
    assert incoming.take_refusal() is None  # reported once
    [reset] = channel.receive()
    assert isinstance(reset, ChannelReset) and f"{MAX_MESSAGE_BYTES + 1} bytes" in reset.detail
    assert channel.receive() == [] and channel.closed


def test_a_peer_without_the_services_proof_is_refused_before_anything_is_unpickled(link):
    inbox, _ = link
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stranger:
        stranger.connect(inbox_name_of(inbox))
        stranger.sendall(encode(batch(1)))  # a message, but no proof first
        incoming = accept_one(inbox)
        assert incoming.receive() == []
        refusal = incoming.take_refusal()
        assert refusal is not None and refusal.reason == "no_proof" and incoming.closed
