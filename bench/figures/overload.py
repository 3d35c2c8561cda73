"""Figure 11: overload that a user can read.  nginx under `wrk -t1 -c20 -d6s` (no think time), the agent
on the worker (--pid, JSON to /dev/null): every request wrk completed must come out as an exchange or
be counted in the summary — lost by the reassembler (`lost_requests`) or skipped whole by the kernel
when its ring is nearly full (`skipped_requests`; `skipped_responses` is the other direction).  Up to
one request per connection may be extra: in flight when wrk stopped, seen by nginx, not counted by wrk.
A summary without the skipped_* fields (a kernel side that does not shed load) shows what vanished
as "unaccounted".
"""
from __future__ import annotations

from harness import accounting, log, row, wait_idle, wrk

CONNECTIONS = 20


def describe(summary: dict, requests: int) -> tuple[dict, str]:
    """The account of one run and its line for the table."""
    acct = accounting(summary, requests, CONNECTIONS)
    if "skipped_requests" in summary or "skipped_responses" in summary:
        skipped = f"skipped whole {acct['skipped_requests']} requests / {acct['skipped_responses']} responses"
    else:
        skipped = "no skipped_* in the summary"
    text = (f"{requests} requests: {acct['exchanges']} exchanges captured ({acct['complete']} complete), {skipped}, "
            f"{acct['lost_requests']} counted lost, {acct['drops']} events dropped -> {acct['unaccounted']} "
            "neither captured nor counted")
    return acct, text


def selftest() -> None:
    """The account reads the kernel's skip counters when the summary has them (no root, no load)."""
    from harness import parse_summary

    line = ("httptrace summary: shown=0 exchanges=223784 incomplete=3 lost_requests=500 skipped_requests=133796 "
            "skipped_responses=133790 drops=0 elapsed=6.4s")
    acct, text = describe(parse_summary(line), 358080)
    assert acct["ok"] and acct["unaccounted"] == 0 and acct["skipped_requests"] == 133796, acct
    assert "skipped whole 133796 requests / 133790 responses" in text, text
    acct, text = describe(parse_summary("httptrace summary: shown=0 exchanges=223784 drops=268614 "
                                        "lost_requests=500 elapsed=6.1s"), 358080)
    assert not acct["ok"] and acct["unaccounted"] == 133796 and "no skipped_*" in text, (acct, text)


def run(bench) -> None:
    ng = bench.nginx
    seconds = 3 if bench.quick else 6
    a = bench.agent(bench.full_capture_args(ng.worker, ng.port))
    w = wrk(ng.url, seconds, conns=CONNECTIONS, threads=1)
    lag = wait_idle(a.pid, timeout=180)
    s = bench.finish(a)
    acct, text = describe(s, w["requests"])
    log(f"overload: {w['rps']:.0f} req/s; {text}; lag {lag:.1f}s")
    bench.raw["overload"] = {"wrk": w, "agent": s, "accounting": acct, "lag_s": lag}
    bench.rows.append(row("11", f"Overload (wrk -t1 -c{CONNECTIONS} -d{seconds}s, agent on the worker): "
                          "requests vs captured + skipped", acct["unaccounted"],
                          f"{text} (at {w['rps']:.0f} req/s; backlog drained {lag:.1f} s after the load)",
                          "captured + skipped = requests", acct["ok"], accounting=acct,
                          summary_has_skipped="skipped_requests" in s))
