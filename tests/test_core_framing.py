"""k2actors.core.framing, directly: nothing is unpickled before the peer's proof, messages
come out whole and in order however the byte stream is cut, and a message over the bound
is refused before its body is buffered."""

from __future__ import annotations

import pickle
import struct

from hypothesis import given
from hypothesis import strategies as st

from k2actors.core.framing import MAX_MESSAGE_BYTES, PROOF_BYTES, Decoder, Refusal, encode, proof
from k2actors.core.payloads import RawBatch
from k2actors.messages import RawBatchTaken

SECRET = b"s" * 32
OURS = proof(SECRET, 1234)  # what a peer of this service sends to the process 1234

messages = st.lists(
    st.one_of(
        st.builds(RawBatchTaken, st.integers(min_value=0)),
        st.builds(RawBatch, st.text(max_size=20), st.sampled_from(["BINANCE", "BINANCE_US"]), st.integers(min_value=0),
                  st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=300)), max_size=20).map(tuple)),
    ),
    max_size=30,
)


class Recorded:
    """Unpickling one of these calls record(): a stand-in for a pickle that runs code."""

    calls: list[str] = []

    def __reduce__(self):
        return (Recorded.calls.append, ("unpickled",))


def feed_in_pieces(decoder: Decoder, stream: bytes, cuts: list[int]) -> list[object]:
    received = []
    start = 0
    for cut in sorted(cut for cut in cuts if cut < len(stream)) + [len(stream)]:
        received.extend(decoder.feed(stream[start:cut]))
        start = cut
    return received


@given(messages, st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_messages_come_out_whole_and_in_order_however_the_stream_is_cut(sent, cuts):
    stream = OURS + b"".join(encode(message) for message in sent)
    decoder = Decoder(OURS)
    assert feed_in_pieces(decoder, stream, cuts) == sent
    assert decoder.refusal is None


def test_a_message_comes_out_only_once_its_last_byte_has_come():
    data = OURS + encode(RawBatchTaken(7))
    decoder = Decoder(OURS)
    assert [decoder.feed(data[i:i + 1]) for i in range(len(data) - 1)] == [[]] * (len(data) - 1)
    assert decoder.feed(data[-1:]) == [RawBatchTaken(7)]
    assert decoder.feed(b"") == []


def test_proofs_differ_by_secret_and_by_receiving_process():
    assert len(OURS) == PROOF_BYTES
    assert proof(SECRET, 1234) == OURS
    assert proof(SECRET, 1235) != OURS
    assert proof(b"t" * 32, 1234) != OURS


@given(st.integers(min_value=0, max_value=PROOF_BYTES - 1), st.lists(st.integers(min_value=0, max_value=200), max_size=5))
def test_a_peer_without_the_proof_is_refused_and_nothing_it_sent_is_unpickled(wrong_byte, cuts):
    Recorded.calls = []
    forged = bytearray(OURS)
    forged[wrong_byte] ^= 0xFF
    decoder = Decoder(OURS)
    assert feed_in_pieces(decoder, bytes(forged) + encode(Recorded()), cuts) == []
    assert decoder.refusal is not None and decoder.refusal.reason == "no_proof"
    assert decoder.feed(encode(Recorded())) == []  # refused for good
    assert Recorded.calls == []


def test_a_peer_that_sends_a_pickle_straight_away_is_refused_without_unpickling_it():
    Recorded.calls = []
    decoder = Decoder(OURS)
    assert decoder.feed(encode(Recorded()) * 3) == []
    assert decoder.refusal == Refusal("no_proof", "its first bytes were not this service's proof")
    assert Recorded.calls == []


def test_a_proof_for_another_process_is_refused():
    decoder = Decoder(OURS)
    assert decoder.feed(proof(SECRET, 99) + encode(RawBatchTaken(1))) == []
    assert decoder.refusal is not None and decoder.refusal.reason == "no_proof"


def test_a_message_over_the_bound_is_refused_by_its_length_and_what_came_before_it_still_comes_out():
    decoder = Decoder(OURS, max_message_bytes=1000)
    header_only = struct.pack("!I", 1001)  # the body is never sent: the length alone refuses it
    assert decoder.feed(OURS + encode(RawBatchTaken(1)) + header_only) == [RawBatchTaken(1)]
    assert decoder.refusal is not None and decoder.refusal.reason == "oversized"
    assert "1001 bytes" in decoder.refusal.detail
    assert decoder.feed(encode(RawBatchTaken(2))) == []


def test_a_message_at_the_bound_comes_out():
    body = pickle.dumps(b"x" * 500, protocol=pickle.HIGHEST_PROTOCOL)
    decoder = Decoder(OURS, max_message_bytes=len(body))
    assert decoder.feed(OURS + struct.pack("!I", len(body)) + body) == [b"x" * 500]
    assert decoder.refusal is None


def test_the_default_bound_carries_far_more_than_a_batch():
    from k2actors.core.link import MAX_BATCH_BYTES

    assert MAX_MESSAGE_BYTES >= 4 * MAX_BATCH_BYTES
