"""The Tracer's kernel counters, read from per-CPU maps: skipped exchanges and drops in stats()."""
from __future__ import annotations

import struct

from httptrace.tracer import SHED_HEADROOM, Tracer


class PerCpuMap:
    """A per-CPU array map as libbpf returns it: one u64 per CPU for each index."""

    def __init__(self, values: dict[int, list[int]]):
        self.values = values

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        per_cpu = self.values.get(struct.unpack("<I", key)[0])
        if per_cpu is None:
            return None
        assert value_size == 8 * len(per_cpu)
        return struct.pack(f"<{len(per_cpu)}Q", *per_cpu)


class FakeObject:
    def __init__(self, maps: dict[str, PerCpuMap]):
        self.maps = maps

    def map(self, name: str) -> PerCpuMap:
        return self.maps[name]


def tracer_with(maps: dict[str, PerCpuMap], ncpus: int = 3) -> Tracer:
    tracer = Tracer(programs="compat")
    tracer._object = FakeObject(maps)   # type: ignore[assignment]
    tracer._ncpus = ncpus
    return tracer


def test_skipped_sums_every_cpu_per_direction():
    tracer = tracer_with({"skipped": PerCpuMap({0: [5, 0, 2], 1: [4, 1, 2]}),
                          "drops": PerCpuMap({1: [0, 0, 0], 2: [1, 0, 0], 3: [0, 0, 0]}),
                          "go_tls_errors": PerCpuMap({0: [0, 0, 0], 1: [0, 0, 0]})})
    assert tracer.skipped() == {"skipped_requests": 7, "skipped_responses": 7}
    stats = tracer.stats()
    assert stats["skipped_requests"] == 7 and stats["skipped_responses"] == 7 and stats["drops"] == 1


def test_not_started_has_no_counters():
    assert Tracer(programs="compat").skipped() == {}


def test_shedding_starts_with_an_eighth_of_the_ring_left_for_messages_under_way():
    config = Tracer(ring_buffer_size=1 << 20, programs="compat")._config()
    assert config.shed_bytes == (1 << 20) - (1 << 20) // SHED_HEADROOM == 896 << 10
    assert 0 < config.wakeup_bytes < config.shed_bytes
