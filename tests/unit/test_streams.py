"""streams.DirectionStream: ordering by pos, gaps, truncation, duplicates."""
from __future__ import annotations

from httptrace.streams import DirectionStream, Gap, Segment


def describe(pieces) -> list[tuple]:
    out = []
    for piece in pieces:
        if isinstance(piece, Gap):
            out.append(("gap", piece.pos, piece.size))
        else:
            out.append(("seg", piece.pos, piece.payload, piece.not_copied))
    return out


def test_in_order_events_pass_straight_through():
    stream = DirectionStream()
    assert describe(stream.push(0, b"abc", 0, 1)) == [("seg", 0, b"abc", 0)]
    assert describe(stream.push(3, b"de", 0, 2)) == [("seg", 3, b"de", 0)]
    assert stream.expected == 5 and not stream.held


def test_not_copied_bytes_advance_the_expected_position():
    stream = DirectionStream()
    [segment] = stream.push(0, b"abc", 97, 1)
    assert (segment.not_copied, segment.end, stream.expected) == (97, 100, 100)
    assert describe(stream.push(100, b"x", 0, 2)) == [("seg", 100, b"x", 0)]   # no gap: truncation is not loss


def test_sendfile_segment_keeps_its_flag():
    stream = DirectionStream()
    [segment] = stream.push(0, b"", 4096, 1, not_visible=True)
    assert segment.not_visible and stream.expected == 4096


def test_out_of_order_segment_waits_for_the_hole_to_fill():
    stream = DirectionStream()
    assert stream.push(5, b"fgh", 0, 2) == []
    assert stream.held_bytes == 3 and stream.reordered == 1
    assert describe(stream.push(0, b"abcde", 0, 1)) == [("seg", 0, b"abcde", 0), ("seg", 5, b"fgh", 0)]
    assert stream.expected == 8 and stream.held_bytes == 0


def test_a_hole_is_declared_a_gap_when_the_window_overflows():
    stream = DirectionStream(window=2)
    stream.push(0, b"ab", 0, 1)
    assert stream.push(10, b"k", 0, 2) == []
    assert stream.push(11, b"l", 0, 3) == []
    out = describe(stream.push(20, b"u", 0, 4))
    assert out == [("gap", 2, 8), ("seg", 10, b"k", 0), ("seg", 11, b"l", 0), ("gap", 12, 8), ("seg", 20, b"u", 0)]
    assert stream.expected == 21 and not stream.held


def test_window_zero_declares_gaps_at_once():
    stream = DirectionStream(window=0)
    stream.push(0, b"ab", 0, 1)
    assert describe(stream.push(5, b"f", 0, 2)) == [("gap", 2, 3), ("seg", 5, b"f", 0)]


def test_a_hole_is_declared_a_gap_after_the_timeout():
    stream = DirectionStream(timeout_ns=100)
    stream.push(0, b"ab", 0, 1_000)
    assert stream.push(5, b"f", 0, 1_050) == []
    assert stream.release_stale(1_100) == []
    assert describe(stream.release_stale(1_151)) == [("gap", 2, 3), ("seg", 5, b"f", 0)]
    # the next event's own timestamp also ends the wait
    assert stream.push(10, b"k", 0, 2_000) == []
    assert describe(stream.push(12, b"m", 0, 2_101)) == [("gap", 6, 4), ("seg", 10, b"k", 0), ("gap", 11, 1),
                                                         ("seg", 12, b"m", 0)]


def test_too_many_held_bytes_end_the_wait():
    stream = DirectionStream(max_held_bytes=10)
    stream.push(0, b"a", 0, 1)
    assert stream.push(5, b"x" * 8, 0, 2) == []
    assert describe(stream.push(13, b"y" * 4, 0, 3)) == [("gap", 1, 4), ("seg", 5, b"x" * 8, 0), ("seg", 13, b"yyyy", 0)]


def test_release_gives_up_on_every_hole():
    stream = DirectionStream()
    stream.push(0, b"a", 0, 1)
    stream.push(3, b"d", 0, 2)
    assert describe(stream.release()) == [("gap", 1, 2), ("seg", 3, b"d", 0)]
    assert stream.release() == []


def test_duplicates_and_overlaps_are_trimmed():
    stream = DirectionStream()
    stream.push(0, b"abcdef", 0, 1)
    assert stream.push(0, b"abc", 0, 2) == [] and stream.duplicates == 1
    assert describe(stream.push(4, b"efgh", 0, 3)) == [("seg", 6, b"gh", 0)]
    # overlap that ends inside the not-copied part
    stream.push(8, b"ij", 10, 4)               # expected now 20
    assert describe(stream.push(9, b"j", 15, 5)) == [("seg", 20, b"", 5)]


def test_overlapping_held_segments():
    stream = DirectionStream()
    stream.push(0, b"a", 0, 1)
    stream.push(3, b"de", 0, 2)
    stream.push(3, b"defg", 0, 3)              # same start, longer: replaces
    stream.push(4, b"ef", 0, 4)                # inside the held one
    assert describe(stream.push(1, b"bc", 0, 5)) == [("seg", 1, b"bc", 0), ("seg", 3, b"defg", 0)]
    assert stream.expected == 7 and not stream.held and stream.held_bytes == 0


def test_a_stream_found_mid_way_starts_at_its_first_event():
    stream = DirectionStream(start=None)
    assert describe(stream.push(123_456, b"x", 0, 1)) == [("seg", 123_456, b"x", 0)]
    assert stream.expected == 123_457


def test_a_stream_whose_start_was_lost_begins_with_a_gap():
    stream = DirectionStream(start=0, window=0)
    assert describe(stream.push(50, b"x", 0, 1)) == [("gap", 0, 50), ("seg", 50, b"x", 0)]


def test_drop_held_makes_the_bytes_part_of_a_later_gap():
    stream = DirectionStream()
    stream.push(0, b"a", 0, 1)
    stream.push(5, b"fff", 0, 2)
    assert stream.drop_held() == 3 and stream.held_bytes == 0
    assert describe(stream.push(1, b"bcde", 0, 3)) == [("seg", 1, b"bcde", 0)]
    stream.push(9, b"j", 0, 4)
    assert describe(stream.release()) == [("gap", 5, 4), ("seg", 9, b"j", 0)]


def test_segment_repr_is_short():
    assert "..." in repr(Segment(0, b"x" * 100, 0, 1))
