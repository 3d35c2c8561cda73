"""Container attribution with real cgroup v2 directories named as each runtime names them.

No container engine is needed to test the mapping: what httptrace reads is the kernel's cgroup id of
the process and the cgroup hierarchy's directory names. The test makes those directories in the real
cgroup v2 hierarchy (found in /proc/self/mountinfo), moves a real server into each (its pid written to
cgroup.procs before it execs), and curls each from the host."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid

import pytest

from httptrace.containers import cgroup2_mount

from .conftest import free_port, wait_for_port
from .test_cli import start_cli


def _layouts(base: str):
    """(runtime, pod uid or None, cgroup directory relative to base) for one container of each kind."""
    pod_a, pod_b = str(uuid.uuid4()), str(uuid.uuid4())
    ids = [secrets.token_hex(32) for _ in range(5)]
    return [
        ("docker", None, ids[0], f"system.slice/docker-{ids[0]}.scope"),
        ("docker", None, ids[1], f"docker/{ids[1]}"),
        ("containerd", pod_a, ids[2], "kubepods.slice/kubepods-burstable.slice/"
                                       f"kubepods-burstable-pod{pod_a.replace('-', '_')}.slice/cri-containerd-{ids[2]}.scope"),
        ("crio", pod_b, ids[3], "kubepods.slice/kubepods-besteffort.slice/"
                                 f"kubepods-besteffort-pod{pod_b.replace('-', '_')}.slice/crio-{ids[3]}.scope"),
        ("podman", None, ids[4], f"machine.slice/libpod-{ids[4]}.scope"),
    ]


@pytest.fixture
def containers(tmp_path):
    """Five servers, each in a cgroup named like a container of one runtime: [(runtime, pod, id, path, port)]."""
    mount = cgroup2_mount()
    assert mount is not None, "this test needs a cgroup v2 hierarchy (unified or hybrid layout)"
    base = os.path.join(mount, f"httptrace-e2e-{os.getpid()}-{secrets.token_hex(4)}")
    made, servers, out = [], [], []
    try:
        for runtime, pod, cid, rel in _layouts(base):
            directory = os.path.join(base, rel)
            parts = rel.split("/")
            for depth in range(len(parts) + 1):
                path = os.path.join(base, *parts[:depth])
                if not os.path.isdir(path):
                    os.mkdir(path)
                    made.append(path)
            port = free_port()
            procs = os.path.join(directory, "cgroup.procs")

            def enter(procs=procs):   # runs in the child before exec: the server starts inside the cgroup
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))

            proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                                    cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    preexec_fn=enter)
            servers.append(proc)
            wait_for_port(port)
            cgroup_line = open(f"/proc/{proc.pid}/cgroup").read()
            assert f"0::{directory[len(mount):]}\n" in cgroup_line, cgroup_line
            out.append((runtime, pod, cid, directory[len(mount):], port))
        yield out
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for path in reversed(made):
            os.rmdir(path)


def _curl(port: int, target: str) -> None:
    subprocess.run(["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{port}{target}"], check=True, timeout=30)


def test_json_records_name_each_servers_container(containers):
    ports = [c[4] for c in containers]
    args = [a for port in ports for a in ("--port", str(port))]
    proc = start_cli(*args, "--format", "json", "-c", str(2 * len(containers)))
    for _, _, _, _, port in containers:
        _curl(port, f"/?c={port}")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    by_role = {(r["role"], r["local"]["port"] if r["role"] == "server" else r["remote"]["port"]): r for r in records}
    assert len(by_role) == len(records) == 2 * len(containers), [(r["role"], r["request"]["target"]) for r in records]
    for runtime, pod, cid, path, port in containers:
        server = by_role[("server", port)]
        assert server["request"]["target"] == f"/?c={port}"
        assert server["container"] == {"id": cid, "runtime": runtime, "pod_uid": pod, "cgroup": path}, server
        client = by_role[("client", port)]   # curl runs on the host
        assert client["comm"] == "curl" and client["container"] is None


def test_container_option_keeps_one_container_and_text_shows_its_short_id(containers):
    runtime, _, cid, _, port = containers[2]
    args = [a for c in containers for a in ("--port", str(c[4]))]
    proc = start_cli(*args, "--container", cid[:8], "-c", "1")
    for c in containers:   # the others first: they must not be shown
        if c[4] != port:
            _curl(c[4], "/other")
    _curl(port, "/wanted")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and "/wanted" in lines[0], out
    assert f"@{cid[:12]} server" in lines[0] and cid[:13] not in lines[0], lines[0]


def test_metrics_and_spans_carry_the_container_id(containers, tmp_path):
    """The container id is also the metrics' container_id label and the spans' container.id."""
    import time
    import urllib.request

    from .test_otlp import Receiver, _attributes

    receiver = Receiver()
    metrics_port = free_port()
    args = [a for c in containers for a in ("--port", str(c[4]))]
    proc = start_cli(*args, "--metrics", f"127.0.0.1:{metrics_port}", "--otlp-endpoint",
                     f"http://127.0.0.1:{receiver.port}", "--role", "server", "-o", os.devnull)
    try:
        for c in containers:
            _curl(c[4], "/")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            if all(f'container_id="{c[2]}"' in text for c in containers) and len(receiver.spans()) >= len(containers):
                break
            time.sleep(0.2)
        for _, _, cid, _, _ in containers:
            counts = [line for line in text.splitlines()
                      if line.startswith("http_server_request_duration_seconds_count{") and f'container_id="{cid}"' in line]
            assert len(counts) == 1 and counts[0].endswith(" 1.0"), counts
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        receiver.close()
    assert proc.returncode == 0, err
    by_port = {_attributes(span.attributes)["server.port"]: resource for resource, span in receiver.spans()}
    assert len(receiver.spans()) == len(containers)
    for _, _, cid, _, port in containers:
        assert by_port[port]["container.id"] == cid
