"""HPACK decoding for an observer: header blocks in, fields out, and never a wrong value.

`hpack.Decoder` does the decoding (integers, Huffman, literals); what changes is its table.  An
endpoint's table is complete by construction.  An observer's is not when it joined a connection
mid-way or lost bytes.  HPACK indices count from the newest insertion, so the entries inserted since
we (re)joined still sit at exact indices (62, 63, ...).  Only references past them are unknown, and
`ObserverTable` answers those with `UNKNOWN` instead of raising or guessing.

This never makes a value wrong:
- References only go to entries the encoder still holds, and those are the newest insertions.  So
  keeping an entry the real table evicted (our sizes can be lower bounds) is harmless.  Evicting one
  it kept only turns a known answer into UNKNOWN (partial table) or an error (complete table).
- An entry too large for the real table empties it instead of being inserted.  With the size
  unknown we insert it anyway: the encoder then references nothing older than that entry.
- The table is complete again only when nothing older can be referenced: a size update to 0, or an
  exact size (from a size update) that our own entries fill or overflow.

The decoder is not transactional: entries inserted before an error stay.  After any error the
caller treats the state as lost (`lose_state`), which is what a real endpoint's error means too.
"""
from __future__ import annotations

import logging

from hpack import Decoder
from hpack.exceptions import InvalidTableIndexError
from hpack.table import HeaderTable

# Never a valid HTTP/2 field name or value (a NUL byte): marks what the table could not tell.
UNKNOWN = b"\x00httptrace-unknown\x00"

# hpack logs whole header blocks and fields at DEBUG: captured values must not reach any log.
logging.getLogger("hpack").setLevel(logging.WARNING)

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC)
DEFAULT_TABLE_SIZE = 4096
# A partial table's bound while the encoder's table size is unknown: the protocol's default, or what
# the receiving peer advertised (the real table is usually no larger; if it is, we answer UNKNOWN
# for what we evicted early).
PARTIAL_TABLE_LIMIT = DEFAULT_TABLE_SIZE


def _lower_bound_size(name: bytes, value: bytes) -> int:
    """RFC 7541 section 4.1 entry size, with unknown parts counted as empty."""
    return 32 + (0 if name == UNKNOWN else len(name)) + (0 if value == UNKNOWN else len(value))


class ObserverTable(HeaderTable):
    """A dynamic table that may know only its newest entries; see the module docstring."""

    def __init__(self, complete: bool, limit: int = PARTIAL_TABLE_LIMIT):
        super().__init__()
        self.complete = complete      # every entry the encoder may reference is here
        self.size_known = complete    # _maxsize is the encoder's table size (initial 4096, or an update)
        self.limit = max(limit, DEFAULT_TABLE_SIZE)

    def get_by_index(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LENGTH:
            return _STATIC[index - 1]
        position = index - _STATIC_LENGTH - 1
        if 0 <= position < len(self.dynamic_entries):
            return self.dynamic_entries[position]
        if self.complete or index <= 0:
            raise InvalidTableIndexError(f"Invalid table index {index}")
        return UNKNOWN, UNKNOWN

    def add(self, name: bytes, value: bytes) -> None:
        size = _lower_bound_size(name, value)
        if self.size_known and size > self._maxsize:
            # RFC 7541 section 4.4: an entry larger than the table empties it and is not inserted.
            self.dynamic_entries.clear()
            self._current_size = 0
            self.complete = True
            return
        self.dynamic_entries.appendleft((name, value))
        self._current_size += size
        self._shrink()

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        # Only a dynamic table size update in a header block sets this: an exact size.
        newmax = int(newmax)
        self.resized = newmax != self._maxsize
        self._maxsize = newmax
        self.size_known = True
        if newmax <= 0:
            self.dynamic_entries.clear()
            self._current_size = 0
            self.complete = True
        else:
            self._shrink()

    def _shrink(self) -> None:
        bound = self._maxsize if self.size_known else self.limit
        entries = self.dynamic_entries
        size = self._current_size
        while size > bound:
            name, value = entries.pop()
            size -= _lower_bound_size(name, value)
            if self.size_known:
                # The real table evicted this entry too, and every older one before it.
                self.complete = True
        self._current_size = size
        if not self.complete and self.size_known and size + 32 > self._maxsize:
            # Our entries fill the real table: nothing older (at least 32 bytes) still fits in it.
            self.complete = True


class BlockDecoder:
    """One direction's HPACK state: `decode` whole header blocks in wire order."""

    __slots__ = ("_decoder", "table_limit")

    def __init__(self, complete: bool, *, max_header_list_size: int = 1 << 20):
        self.table_limit = PARTIAL_TABLE_LIMIT   # raised by the peer's SETTINGS_HEADER_TABLE_SIZE
        decoder = Decoder(max_header_list_size=max_header_list_size)
        # An observer does not know which SETTINGS were acknowledged: do not police the size.
        decoder.max_allowed_table_size = 2 ** 32 - 1
        decoder.header_table = ObserverTable(complete, self.table_limit)
        self._decoder = decoder

    @property
    def complete(self) -> bool:
        return self._decoder.header_table.complete

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """(name, value) byte pairs in order, UNKNOWN where the table could not tell; raises
        hpack's HPACKDecodingError (or another error on garbage) when the block is not valid."""
        return self._decoder.decode(block, raw=True)

    def note_table_limit(self, size: int) -> None:
        """The receiving peer allows tables this large: keep that much when the size is unknown."""
        if size > self.table_limit:
            self.table_limit = min(size, 1 << 20)
            self._decoder.header_table.limit = max(self._decoder.header_table.limit, self.table_limit)

    def lose_state(self) -> None:
        """Bytes we could not decode went by: keep no entry we cannot place."""
        self._decoder.header_table = ObserverTable(False, self.table_limit)
