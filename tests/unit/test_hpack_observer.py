"""hpack_observer: an HPACK table that knows what it does not know, and never answers wrongly."""
from __future__ import annotations

import logging
import random

import pytest
from hpack import Encoder
from hpack.exceptions import HPACKDecodingError
from hypothesis import given, settings, strategies as st

from httptrace.hpack_observer import UNKNOWN, BlockDecoder


def encoded_blocks(count: int, seed: int, table_size: int | None = None):
    """`count` header blocks from one encoder (so later blocks reference earlier insertions), with
    the header lists they encode."""
    rng = random.Random(seed)
    encoder = Encoder()
    if table_size is not None:
        encoder.header_table_size = table_size
    names = [f"x-field-{i}".encode() for i in range(40)]
    values = [f"value-{i}".encode() * rng.randint(1, 4) for i in range(60)]
    blocks = []
    for _ in range(count):
        headers = [(b":method", rng.choice([b"GET", b"POST", b"PUT"])), (b":path", b"/p/%d" % rng.randint(0, 30)),
                   (b":authority", b"svc.example")]
        headers += [(rng.choice(names), rng.choice(values)) for _ in range(rng.randint(0, 8))]
        blocks.append((encoder.encode(headers), headers))
    return blocks


def decode_from(blocks, start: int) -> tuple[int, int, int]:
    """Join the stream at block `start` with a partial table: (right, unknown, wrong) field counts."""
    decoder = BlockDecoder(complete=False)
    right = unknown = wrong = 0
    for block, expected in blocks[start:]:
        got = decoder.decode(block)
        assert len(got) == len(expected)
        for (name, value), (want_name, want_value) in zip(got, expected):
            if name == UNKNOWN or value == UNKNOWN:
                unknown += 1
                if name != UNKNOWN:
                    assert name == want_name
                if value != UNKNOWN:
                    assert value == want_value
            elif (name, value) == (want_name, want_value):
                right += 1
            else:
                wrong += 1
    return right, unknown, wrong


def test_complete_decoder_matches_the_encoder():
    blocks = encoded_blocks(300, seed=1)
    decoder = BlockDecoder(complete=True)
    for block, expected in blocks:
        assert [tuple(field) for field in decoder.decode(block)] == expected
    assert decoder.complete


@pytest.mark.parametrize("start", [1, 17, 700, 2999])
def test_joining_mid_stream_is_never_wrong(start):
    right, unknown, wrong = decode_from(encoded_blocks(3000, seed=2), start)
    assert wrong == 0
    assert right > 0
    if start == 700:
        # Most fields come right once the table refills with entries inserted after the join.
        assert right > 3 * unknown


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), start=st.integers(0, 199), size=st.sampled_from([None, 0, 100, 256, 1024, 8192]))
def test_never_wrong_whatever_the_join_point_and_table_size(seed, start, size):
    assert decode_from(encoded_blocks(200, seed, size), start)[2] == 0


def test_unknown_index_in_a_partial_table_is_unknown_not_an_error():
    encoder = Encoder()
    encoder.encode([(b"x-a", b"1")])                 # inserted before we joined
    block = encoder.encode([(b"x-a", b"1"), (b"x-b", b"2")])    # references it, inserts x-b
    decoder = BlockDecoder(complete=False)
    assert decoder.decode(block) == [(UNKNOWN, UNKNOWN), (b"x-b", b"2")]
    assert not decoder.complete


def test_unknown_index_in_a_complete_table_raises():
    encoder = Encoder()
    encoder.encode([(b"x-a", b"1")])
    with pytest.raises(HPACKDecodingError):
        BlockDecoder(complete=True).decode(encoder.encode([(b"x-a", b"1")]))


def test_literal_with_an_unknown_indexed_name_keeps_its_value():
    encoder = Encoder()
    encoder.encode([(b"x-name", b"first")])
    block = encoder.encode([(b"x-name", b"second")])   # name from the dynamic table, literal value
    assert BlockDecoder(complete=False).decode(block) == [(UNKNOWN, b"second")]


def test_a_size_update_to_zero_makes_the_table_complete():
    encoder = Encoder()
    encoder.encode([(b"x-a", b"1")])
    encoder.header_table_size = 0
    encoder.header_table_size = 4096
    decoder = BlockDecoder(complete=False)
    assert decoder.decode(encoder.encode([(b"x-b", b"2")])) == [(b"x-b", b"2")]
    assert decoder.complete
    assert decoder.decode(encoder.encode([(b"x-b", b"2")])) == [(b"x-b", b"2")]


def test_an_exact_size_our_entries_fill_makes_the_table_complete():
    encoder = Encoder()
    encoder.encode([(b"x-old", b"v")])
    encoder.header_table_size = 100        # the update says the size; two known entries fill it
    decoder = BlockDecoder(complete=False)
    decoder.decode(encoder.encode([(b"x-a", b"a" * 20), (b"x-b", b"b" * 20)]))
    assert decoder.complete


def test_lose_state_forgets_every_entry():
    encoder = Encoder()
    decoder = BlockDecoder(complete=True)
    decoder.decode(encoder.encode([(b"x-a", b"1")]))
    decoder.lose_state()
    assert decoder.decode(encoder.encode([(b"x-a", b"1")])) == [(UNKNOWN, UNKNOWN)]


def test_hpack_never_logs_captured_values(caplog):
    encoder = Encoder()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger().setLevel(logging.DEBUG)
        BlockDecoder(complete=True).decode(encoder.encode([(b"authorization", b"Bearer s3cret")]))
    assert "s3cret" not in caplog.text
