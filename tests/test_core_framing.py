"""k2actors.core.framing, directly: messages come out whole and in order, however the byte
stream is cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from k2actors.core.framing import Decoder, encode
from k2actors.messages import RawBatch, RawBatchTaken

messages = st.lists(
    st.one_of(
        st.builds(RawBatchTaken, st.integers(min_value=0)),
        st.builds(RawBatch, st.text(max_size=20), st.sampled_from(["BINANCE", "BINANCE_US"]), st.integers(min_value=0),
                  st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=300)), max_size=20).map(tuple)),
    ),
    max_size=30,
)


@given(messages, st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_messages_come_out_whole_and_in_order_however_the_stream_is_cut(sent, cuts):
    stream = b"".join(encode(message) for message in sent)
    decoder = Decoder()
    received = []
    start = 0
    for cut in sorted(cut for cut in cuts if cut < len(stream)) + [len(stream)]:
        received.extend(decoder.feed(stream[start:cut]))
        start = cut
    assert received == sent


def test_a_message_comes_out_only_once_its_last_byte_has_come():
    data = encode(RawBatchTaken(7))
    decoder = Decoder()
    assert [decoder.feed(data[i:i + 1]) for i in range(len(data) - 1)] == [[]] * (len(data) - 1)
    assert decoder.feed(data[-1:]) == [RawBatchTaken(7)]
    assert decoder.feed(b"") == []
