"""The root end-to-end subset, run inside a QEMU guest (another kernel, a Debian userland) with the wheel.

run_kernels.py copies this file into the guest's scratch directory and runs it with the python of a venv
that the userland's own python3 made, with only the wheel (and its PyPI dependencies) installed: nothing
from the source tree is imported. Servers and clients are the userland's (python3, curl, nginx, its
libssl) plus the static Go seed server, all subprocesses (the tracer never traces its own process).
Runs on Python 3.9+. Each check prints PASS/FAIL with a detail line; result.json (and verifier.log when
a load failed) go to --out.

Usage: python guest_check.py --out DIR --family fast|compat --seed-server PATH
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
import ssl
import traceback

OUT = "."
FAMILY = "fast"        # the program family httptrace must pick on this kernel (kernels.txt)
SEED_SERVER = ""       # tests/e2e's Go seed server, static
RESULTS: list[dict] = []
PICKED: dict = {}      # what `httptrace --check` said it picked, for result.json

# Kernel features the object uses beyond the 5.8 ring buffer, with the release that brought each.
HELPERS = (("bpf_ringbuf_reserve", 131, "5.8"), ("bpf_get_current_task_btf", 158, "5.11"),
           ("bpf_task_pt_regs", 175, "5.15"), ("bpf_loop", 181, "5.17"))
PROG_TYPES = (("tracepoint", 5), ("kprobe/uprobe", 2))


def check(func):
    """Run one check; an exception or AssertionError is a FAIL with its message, and the rest go on."""
    name = func.__name__
    started = time.monotonic()
    try:
        detail = func() or ""
        ok = True
    except Exception as exc:  # every failure is reported, never fatal to the other checks
        detail = f"{type(exc).__name__}: {exc}"
        ok = False
        traceback.print_exc(file=sys.stdout)
    seconds = time.monotonic() - started
    RESULTS.append({"name": name, "ok": ok, "detail": detail, "seconds": round(seconds, 2)})
    print(f"{'PASS' if ok else 'FAIL'} {name} ({seconds:.1f}s): {detail}", flush=True)
    return ok


# ---- helpers -------------------------------------------------------------------------------------

def free_port(family=socket.AF_INET6) -> int:
    with socket.socket(family) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        with socket.socket(family) as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port}")


def write_verifier_log(exc: BaseException) -> None:
    """A failed load keeps libbpf's warnings (the verifier's log among them) on the exception."""
    lines = getattr(exc, "verifier_log", None)
    if lines is None:
        return
    path = os.path.join(OUT, "verifier.log")
    with open(path, "a") as f:
        f.write(f"== {exc}\n" + "\n".join(lines) + "\n")
    print(f"verifier log of the failed load kept in {path}", flush=True)


class Capture:
    """Tracer.exchanges() collected in a thread for the duration of a `with` block."""

    def __init__(self, **kwargs):
        from httptrace.tracer import Tracer

        self.tracer = Tracer(**kwargs)
        self.exchanges: list = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            for ex in self.tracer.exchanges():
                self.exchanges.append(ex)
        except BaseException as exc:  # surfaced in __exit__
            self.error = exc

    def __enter__(self):
        try:
            self.tracer.__enter__()
        except Exception as exc:
            write_verifier_log(exc)
            raise
        self.thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(1.0)  # emulated CPUs are slow: let the last events reach the ring buffer
        self.tracer.stop()
        self.thread.join(60)
        self.drops = self.tracer.drops()
        self.tracer.__exit__(*exc)
        if self.error:
            raise self.error

    def of(self, pid: int) -> list:
        return [ex for ex in self.exchanges if ex.connection.pid == pid]


class HttpServer:
    """python -m http.server serving a directory, on :: (dual-stack) in a child process."""

    def __init__(self, root: str):
        self.root = root
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "::", "--directory", root,
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, "::1")

    def close(self):
        self.proc.kill()
        self.proc.wait()


def curl(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-g", "--max-time", str(timeout), *args], capture_output=True,
                          timeout=timeout + 10)


def wire_head(message) -> bytes:
    """The status line and headers as they were on the wire (HTTP/1.x: `Name: value` CRLF each)."""
    lines = [f"{message.version} {message.status} {message.reason}"]
    lines += [f"{k}: {v}" for k, v in message.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]  # arm64: the generic syscall table
GET_NEXT_ID = {"prog": 11, "map": 12, "link": 31}  # BPF_PROG/MAP/LINK_GET_NEXT_ID


def bpf_ids(kind: str = "prog") -> set[int]:
    """Every BPF program (or map, or link) in the kernel by id, from the bpf() syscall itself: the wheel
    need not export libbpf's symbols, and this sees what any library left behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 3)()  # union bpf_attr for *_GET_NEXT_ID: start_id, next_id, open_flags
    ids = set()
    while libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(GET_NEXT_ID[kind]), attr, ctypes.c_uint(12)) == 0:
        ids.add(attr[1])
        attr[0] = attr[1]
    err = ctypes.get_errno()
    assert err == 2, f"BPF_{kind.upper()}_GET_NEXT_ID: {os.strerror(err)}"  # ENOENT ends the walk
    return ids


def bpf_program_ids() -> set[int]:
    return bpf_ids("prog")


def mapped_files() -> list[str]:
    with open("/proc/self/maps") as f:
        return sorted({line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6})


def bpf_fds() -> list[str]:
    """This process's file descriptors that are BPF objects (programs, maps, links)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:") and "bpf" in target:
            found.append(f"{fd} -> {target}")
    return found


# ---- the checks ----------------------------------------------------------------------------------

BEFORE: dict[str, set[int]] = {}  # BPF object ids in the kernel before the first load, by kind


def kernel_features():
    """What the guest kernel offers that the object uses (libbpf's probes: a tiny program per helper)."""
    from httptrace import checks
    from httptrace._libbpf import lib, ffi

    uname = os.uname()
    print(f"guest kernel: {uname.release} {uname.version}", flush=True)
    print(f"python {platform.python_version()}, wheel at {os.path.dirname(checks.__file__)}", flush=True)
    features = {"btf": os.path.isfile("/sys/kernel/btf/vmlinux"),
                "ringbuf map": lib.libbpf_probe_bpf_map_type(27, ffi.NULL) == 1}
    for helper, helper_id, since in HELPERS:
        for type_name, prog_type in PROG_TYPES:
            features[f"{helper} ({since}) in {type_name}"] = lib.libbpf_probe_bpf_helper(
                prog_type, helper_id, ffi.NULL) == 1
    for name, ok in features.items():
        print(f"  feature {name}: {'yes' if ok else 'NO'}", flush=True)
    with open(os.path.join(OUT, "features.json"), "w") as f:
        json.dump({"release": uname.release, "version": uname.version, "features": features}, f, indent=1)
    missing = [name for name, ok in features.items() if not ok]
    basic = [name for name in missing if name in ("btf", "ringbuf map") or name.startswith("bpf_ringbuf")]
    assert not basic, f"missing what every family needs: {', '.join(basic)}"
    if FAMILY == "fast":
        assert not missing, f"listed as fast, but missing: {', '.join(missing)}"
        return f"{uname.release}: BTF, ring buffer, bpf_get_current_task_btf, bpf_task_pt_regs, bpf_loop all present"
    assert missing, "listed as compat, but every feature of the fast family is present"
    return f"{uname.release}: BTF and ring buffer present; missing (so compat): {', '.join(missing)}"


def installed_wheel():
    """httptrace comes from the venv's installed wheel, with the wheel's own libbpf (inside its module or
    beside it), not from a source tree or the distribution."""
    import importlib.metadata

    import httptrace
    import httptrace._libbpf as module

    venv = os.path.realpath(sys.prefix) + os.sep
    package = os.path.realpath(os.path.dirname(httptrace.__file__))
    assert package.startswith(venv), f"httptrace imported from {package}"
    assert os.path.realpath(module.__file__).startswith(venv), f"the libbpf module is {module.__file__}"
    foreign = [p for p in mapped_files() if re.search(r"/lib(bpf|elf)[-.]", p) and not p.startswith(venv)]
    assert not foreign, f"libbpf/libelf mapped from outside the wheel: {foreign}"
    bundled = [os.path.basename(p) for p in mapped_files() if p.startswith(venv) and re.search(r"\.so", p)]
    return (f"httptrace {importlib.metadata.version('httptrace')} from {package}; "
            f"shared objects from the venv: {', '.join(bundled)}")


def httptrace_check():
    """`python -m httptrace --check` exits 0 and names the program family it picked: the listed one."""
    result = subprocess.run([sys.executable, "-m", "httptrace", "--check"], capture_output=True, text=True,
                            timeout=300)
    print(result.stdout + result.stderr, flush=True)
    problems = [line.strip() for line in result.stdout.splitlines() if line.strip() and not line.startswith("ok")]
    assert result.returncode == 0, f"exit {result.returncode}: {' | '.join(problems[:3])}"
    picked = re.search(r"^ok\s+programs: (\w+)(.*)$", result.stdout, re.M)
    assert picked, "no 'ok   programs: <family> (...)' line in the output of --check"
    PICKED.update(family=picked.group(1), line=picked.group(0).strip())
    assert picked.group(1) == FAMILY, f"picked {picked.group(1)!r}{picked.group(2)}; this kernel is listed as {FAMILY}"
    return picked.group(0).strip()


def load_and_attach_every_program():
    """Every program the loader chose (one family of the object) is in the kernel and attached: the
    syscall tracepoints and the libssl uprobes."""
    from httptrace import checks
    from httptrace.libbpf import BpfObject
    from httptrace.tracer import Tracer

    obj = BpfObject(checks.object_path())  # opened only, to list what the object holds
    try:
        in_object = {p.name: p.section for p in obj.programs()}
        optional = {p.name for p in obj.programs() if not p.autoload}   # SEC("?..."): one family's
    finally:
        obj.close()
    started = time.monotonic()
    try:
        tracer = Tracer(ports=[1]).__enter__()
    except Exception as exc:
        write_verifier_log(exc)
        raise
    try:
        load_seconds = time.monotonic() - started
        attached = tracer.attached_programs
        libraries = tracer.tls_libraries
        family = tracer.programs
        loaded_ids = bpf_program_ids() - BEFORE["prog"]
    finally:
        tracer.__exit__(None, None, None)
    chosen = set(attached)
    print(f"  {len(in_object)} programs in the object, {len(loaded_ids)} loaded in the kernel, {len(attached)} links; "
          f"TLS libraries: {', '.join(libraries) or 'none'}", flush=True)
    for name, section in sorted(in_object.items()):
        print(f"    {name:32} {section:48} {'attached' if name in chosen else 'not loaded'}", flush=True)
    assert chosen <= set(in_object), f"attached programs not in the object: {sorted(chosen - set(in_object))}"
    sections = [in_object[name].lstrip("?") for name in chosen]  # "?sec": not loaded unless chosen
    assert any(s.startswith("tracepoint/") for s in sections), "no tracepoint program attached"
    assert any(s.startswith("uprobe") or s.startswith("uretprobe") for s in sections), "no libssl uprobe attached"
    # A program loaded but not attached would be one more in the kernel than attached names. The Go TLS
    # programs are the exception: they are attached to each Go program found, and the guest runs none.
    loaded = {name for name in in_object
              if name not in optional or name.startswith("compat_") == (family == "compat")}
    assert {name for name in loaded - chosen if "go_" not in name} == set(), f"not attached: {sorted(loaded - chosen)}"
    assert len(loaded_ids) == len(loaded), f"{len(loaded_ids)} programs in the kernel, {len(loaded)} chosen"
    return (f"{len(chosen)} of the object's {len(in_object)} programs loaded and attached as {len(attached)} links "
            f"in {load_seconds:.1f}s; TLS: {', '.join(libraries) or 'none'}")


def _get(host: str, size: int, name: str):
    """curl GETs a `size`-byte file from http.server over `host`; returns (server, client, exchanges, files)."""
    work = os.path.join("/tmp", f"get-{name}")
    www = os.path.join(work, "www")
    os.makedirs(www, exist_ok=True)
    body = os.urandom(size) if size > 4096 else (b"hello, httptrace on another kernel\n" * (size // 35 + 1))[:size]
    with open(os.path.join(www, name), "wb") as f:
        f.write(body)
    server = HttpServer(www)
    try:
        url = f"http://[{host}]:{server.port}/{name}" if ":" in host else f"http://{host}:{server.port}/{name}"
        headers, out = os.path.join(work, "h"), os.path.join(work, "b")
        with Capture(ports=[server.port]) as cap:
            client = subprocess.Popen(["curl", "-sS", "-g", "--max-time", "120", "-D", headers, "-o", out, url])
            assert client.wait(150) == 0, "curl failed"
    finally:
        server.close()
    with open(headers, "rb") as f:
        head = f.read()
    with open(out, "rb") as f:
        assert f.read() == body, "curl did not receive the file"
    return server.proc.pid, client.pid, cap, body, head


def _assert_exchange(ex, role, body, head, name, method="GET"):
    """One captured exchange against what the client received: the response head and body byte for byte."""
    assert ex.connection.role.value == role, f"role {ex.connection.role} != {role}"
    assert ex.request.method == method and ex.request.target == f"/{name}", f"{ex.request.method} {ex.request.target}"
    assert ex.response is not None, "no response"
    assert ex.response.status == 200, f"status {ex.response.status}"
    assert not ex.flags, f"flags {sorted(f.value for f in ex.flags)}"
    assert ex.response.body_size == len(body), f"body_size {ex.response.body_size} != {len(body)}"
    assert ex.response.body == body, "response body differs from the file"
    assert wire_head(ex.response) == head, f"response head differs:\n{wire_head(ex.response)!r}\n{head!r}"


def _get_exchange(host: str, size: int, name: str) -> str:
    server_pid, client_pid, cap, body, head = _get(host, size, name)
    assert sum(cap.drops.values()) == 0, f"ring buffer drops: {cap.drops}"
    served, fetched = cap.of(server_pid), cap.of(client_pid)
    assert len(served) == 1 and len(fetched) == 1, \
        f"{len(served)} server / {len(fetched)} client exchanges of {len(cap.exchanges)}"
    _assert_exchange(served[0], "server", body, head, name)
    _assert_exchange(fetched[0], "client", body, head, name)
    client = fetched[0].connection
    assert client.remote.ip == host and client.local.ip == host, f"client {client.local} -> {client.remote}"
    server = served[0].connection
    expected_local = host if ":" in host else f"::ffff:{host}"  # the server is dual-stack
    assert server.local.ip == expected_local, f"server local {server.local}"
    return (f"GET /{name} {host}: {len(body)} body bytes byte-exact on both sides "
            f"(server pid {server_pid} {server.local.ip}, curl pid {client_pid} {client.local.ip})")


def curl_to_http_server_ipv4():
    return _get_exchange("127.0.0.1", 1700, "hello.txt")


def one_megabyte_body():
    return _get_exchange("127.0.0.1", 1 << 20, "big.bin")


def ipv6_exchange():
    return _get_exchange("::1", 4096, "six.txt")


POST_SERVER = """
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = b"%d bytes\\n" % len(body)
        self.send_response(201)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


def request_body():
    """A 200 kB POST body arrives whole in the exchange's request."""
    port = free_port(socket.AF_INET)
    server = subprocess.Popen([sys.executable, "-c", POST_SERVER, str(port)])
    body = os.urandom(200_000)
    path = "/tmp/post-body"
    with open(path, "wb") as f:
        f.write(body)
    try:
        wait_for_port(port, "127.0.0.1")
        with Capture(ports=[port]) as cap:
            result = curl("--data-binary", f"@{path}", "-H", "Content-Type: application/octet-stream",
                          f"http://127.0.0.1:{port}/upload")
            assert result.returncode == 0, result.stderr.decode()
    finally:
        server.kill()
        server.wait()
    assert result.stdout == b"200000 bytes\n", result.stdout
    served = cap.of(server.pid)
    assert len(served) == 1, f"{len(served)} server exchanges of {len(cap.exchanges)}"
    ex = served[0]
    assert ex.request.method == "POST" and ex.request.target == "/upload"
    assert ex.request.body == body and ex.request.body_size == len(body), "request body differs"
    assert ex.response.status == 201 and ex.response.body == b"200000 bytes\n"
    return f"POST /upload: {len(body)} request body bytes byte-exact, 201"


def run_client(argv: list[str], timeout: int = 150) -> tuple[int, bytes]:
    """Run a client to its end; (pid, stdout). Its pid picks its side of the exchanges."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}: {err.decode(errors='replace')[-500:]}"
    return proc.pid, out


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def split_heads(data: bytes) -> list[bytes]:
    """curl -D with several transfers: the response heads one after the other, each ending in CRLF CRLF."""
    return [head + b"\r\n\r\n" for head in data.split(b"\r\n\r\n")[:-1]]


def seed_ten_megabytes():
    """The Go seed server's 10 MB answer to POST /customResponse, byte-exact on both sides."""
    size = 10 * 1024 * 1024
    work = "/tmp/seed"
    os.makedirs(work, exist_ok=True)
    head_path, body_path = os.path.join(work, "head"), os.path.join(work, "body")
    request = b'{"size": %d}' % size
    port = free_port(socket.AF_INET)
    server = subprocess.Popen([SEED_SERVER, "-addr", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, "127.0.0.1")
        # 10 MB crosses the ring buffer twice (server and client side): room for both, so a slow
        # emulated reader does not turn this into a drop test.
        with Capture(ports=[port], ring_buffer_size=128 << 20) as cap:
            client_pid, _ = run_client(["curl", "-sS", "--max-time", "150", "-D", head_path, "-o", body_path,
                                        "-H", "Content-Type: application/json", "--data-binary", request,
                                        f"http://127.0.0.1:{port}/customResponse"], timeout=160)
    finally:
        server.kill()
        server.wait()
    head, body = read_bytes(head_path), read_bytes(body_path)
    assert body.startswith(b'{"answer":"') and len(body) == size + len(b'{"answer":""}\n'), f"{len(body)} bytes"
    assert sum(cap.drops.values()) == 0, f"ring buffer drops: {cap.drops}"
    for pid, role in ((server.pid, "server"), (client_pid, "client")):
        exchanges = cap.of(pid)
        assert len(exchanges) == 1, f"{len(exchanges)} {role} exchanges of {len(cap.exchanges)}"
        _assert_exchange(exchanges[0], role, body, head, "customResponse", method="POST")
        assert exchanges[0].request.body == request, f"{role}: request body {exchanges[0].request.body[:60]!r}"
    assert cap.of(server.pid)[0].connection.comm == "seed-server"
    return f"POST /customResponse: {len(body)} body bytes byte-exact on both sides, no drops"


NGINX_CONF = """
daemon off;
master_process off;
error_log {work}/error.log;
pid {work}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    # The body through write/writev, which the tracer copies (a sendfile body is only counted).
    sendfile off;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    client_body_temp_path {work}/body;
    server {{
        listen 127.0.0.1:{port};
        listen [::1]:{port};
        root {work}/www;
    }}
}}
"""


class Nginx:
    """The userland's nginx, one process (master_process off) serving `files` from /tmp."""

    def __init__(self, files: dict[str, bytes]):
        self.work = "/tmp/nginx"
        os.makedirs(os.path.join(self.work, "www"), exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(self.work, "www", name), "wb") as f:
                f.write(data)
        self.port = free_port(socket.AF_INET)
        conf = os.path.join(self.work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(work=self.work, port=self.port))
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", self.work], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, "127.0.0.1", timeout=30)
        except TimeoutError:
            self.close()
            raise AssertionError(f"nginx did not start: {_file_tail(os.path.join(self.work, 'error.log'))}")

    def close(self):
        self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _file_tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().splitlines()[-3:])
    except OSError:
        return f"(no {path})"


def nginx_version() -> str:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return out.split(":", 1)[-1].strip()


def nginx_keepalive():
    """Two requests on one keep-alive connection to the distribution's nginx (curl reuses it): two
    exchanges on each side, in order, each byte-exact with what curl received."""
    files = {"a.txt": b"first on the connection\n" * 40, "b.bin": os.urandom(300_000)}
    outs = {name: f"/tmp/nginx-{name}" for name in files}
    heads_path = "/tmp/nginx-heads"
    with Nginx(files) as nginx:
        urls = [f"http://127.0.0.1:{nginx.port}/{name}" for name in files]
        with Capture(ports=[nginx.port]) as cap:
            args = ["curl", "-sS", "--max-time", "120", "-D", heads_path, "-w", "%{num_connects} %{local_port}\n"]
            for name, url in zip(files, urls):
                args += ["-o", outs[name], url]
            client_pid, out = run_client(args)
        server_pid = nginx.proc.pid
    connects = [line.split() for line in out.decode().splitlines()]
    assert [c[0] for c in connects] == ["1", "0"], f"curl connects per transfer: {connects} (want one connection)"
    heads = split_heads(read_bytes(heads_path))
    assert len(heads) == 2, f"{len(heads)} response heads"
    for name, data in files.items():
        assert read_bytes(outs[name]) == data, f"curl did not receive {name}"
    assert sum(cap.drops.values()) == 0, f"ring buffer drops: {cap.drops}"
    for pid, role in ((server_pid, "server"), (client_pid, "client")):
        exchanges = cap.of(pid)
        assert [ex.request.target for ex in exchanges] == [f"/{name}" for name in files], \
            f"{role}: {[ex.request.target for ex in exchanges]} of {len(cap.exchanges)}"
        for ex, (name, data), head in zip(exchanges, files.items(), heads):
            _assert_exchange(ex, role, data, head, name)
        connections = {(ex.connection.local, ex.connection.remote) for ex in exchanges}
        assert len(connections) == 1, f"{role}: {len(connections)} connections"
        client_end = exchanges[0].connection.local if role == "client" else exchanges[0].connection.remote
        assert client_end.port == int(connects[0][1]), f"{role}: client port {client_end.port}, curl {connects[0][1]}"
    return (f"{nginx_version()}: GET /a.txt then /b.bin ({len(files['b.bin'])} bytes) on one connection, "
            f"2 exchanges byte-exact on each side")


RAW_CLIENT = r"""
import re, socket, sys
# One keep-alive connection: GET argv[3], then wait for a line on stdin, then GET argv[4]. Each response
# is read whole (Content-Length) and the bytes as received are written to argv[5] and argv[6].
host, port = sys.argv[1], int(sys.argv[2])
sock = socket.create_connection((host, port))

def exchange(target, out):
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: raw-client\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data) < want(data):
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("connection closed early")
        data += chunk
    with open(out, "wb") as f:
        f.write(data)
    print("done", sock.getsockname()[1], flush=True)

def want(data):
    head = data.split(b"\r\n\r\n", 1)[0]
    return len(head) + 4 + int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))

exchange(sys.argv[3], sys.argv[5])
sys.stdin.readline()
exchange(sys.argv[4], sys.argv[6])
"""


def connection_opened_before_the_tracer():
    """A keep-alive connection to nginx used once before the tracer started: the next exchange on it is
    captured on both sides (flagged mid_stream, the only flag), byte-exact with what the client received."""
    files = {"first.txt": b"before the tracer\n" * 20, "second.bin": os.urandom(150_000)}
    first, second = "/tmp/raw-first", "/tmp/raw-second"
    with Nginx(files) as nginx:
        client = subprocess.Popen([sys.executable, "-c", RAW_CLIENT, "127.0.0.1", str(nginx.port), "/first.txt",
                                   "/second.bin", first, second], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        try:
            line = client.stdout.readline()
            assert line.startswith("done "), f"the first exchange failed: {line!r}"
            local_port = int(line.split()[1])
            with Capture(ports=[nginx.port]) as cap:
                client.stdin.write("go\n")
                client.stdin.flush()
                assert client.stdout.readline() == f"done {local_port}\n", "the second exchange failed"
                assert client.wait(60) == 0
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        server_pid = nginx.proc.pid
    raw = read_bytes(second)
    assert raw.endswith(files["second.bin"]) and read_bytes(first).endswith(files["first.txt"])
    for pid, role in ((server_pid, "server"), (client.pid, "client")):
        exchanges = cap.of(pid)
        assert [ex.request.target for ex in exchanges] == ["/second.bin"], \
            f"{role}: {[ex.request.target for ex in exchanges]} of {len(cap.exchanges)}"
        ex = exchanges[0]
        # The kernel saw no connect()/accept() for it: the role comes from who sent the request.
        assert ex.connection.role.value == role, f"{role}: role {ex.connection.role}"
        assert {f.value for f in ex.flags} == {"mid_stream"}, f"{role}: flags {sorted(f.value for f in ex.flags)}"
        assert ex.response.status == 200 and wire_head(ex.response) + ex.response.body == raw, \
            f"{role}: the captured response differs from the {len(raw)} bytes the client received"
        client_end = ex.connection.local if role == "client" else ex.connection.remote
        assert client_end.port == local_port, f"{role}: client port {client_end.port} != {local_port}"
    return (f"connection from port {local_port} opened before the tracer: GET /second.bin ({len(raw)} bytes) "
            "captured on both sides, byte-exact, mid_stream")


TLS_SERVER = """
import http.server, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def mapped_libssl() -> str:
    """The distribution's libssl, as this python's ssl module maps it."""
    import ssl  # noqa: F401

    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(None, 5)[-1].strip()
            if re.search(r"/libssl\.so\.[0-9.]+$", path):
                return path
    raise AssertionError("python's ssl module maps no libssl")


def tls_exchange():
    """HTTPS between curl and Python's ssl, both on the distribution's libssl: the plaintext through the
    uprobes on that libssl, on this kernel."""
    work = "/tmp/tls"
    os.makedirs(work, exist_ok=True)
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    body = b"secret over TLS\n" * 300
    with open(os.path.join(work, "secret.txt"), "wb") as f:
        f.write(body)
    port = free_port(socket.AF_INET)
    server = subprocess.Popen([sys.executable, "-c", TLS_SERVER, str(port), cert, key], cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, "127.0.0.1")
        with Capture(ports=[port]) as cap:
            result = curl("-k", f"https://127.0.0.1:{port}/secret.txt")
            assert result.returncode == 0, result.stderr.decode()
    finally:
        server.kill()
        server.wait()
    assert result.stdout == body
    libssl = mapped_libssl()
    probed = [path for path in cap.tracer.tls_libraries if os.path.exists(path)]
    assert any(os.path.samefile(path, libssl) for path in probed), f"{libssl} is not among the probed {probed}"
    tls = [ex for ex in cap.exchanges if ex.connection.tls]
    roles = sorted(ex.connection.role.value for ex in tls)
    assert roles == ["client", "server"], f"TLS exchanges by role: {roles} (of {len(cap.exchanges)})"
    for ex in tls:
        assert ex.request.target == "/secret.txt" and ex.response.status == 200
        assert ex.response.body == body, f"{ex.connection.role.value}: TLS response body differs"
    return (f"GET /secret.txt over TLS through {libssl} ({ssl.OPENSSL_VERSION}): plaintext byte-exact "
            f"for curl and the Python server ({len(body)} bytes)")


def clean_detach():
    """After the tracers closed: no BPF fds left in this process; no program, map or link left in the kernel."""
    import gc

    gc.collect()
    fds = bpf_fds()
    assert not fds, f"BPF file descriptors still open: {fds}"
    deadline = time.monotonic() + 30
    while True:  # programs and maps are freed after an RCU grace period, in a work queue
        left = {kind: sorted(bpf_ids(kind) - BEFORE[kind]) for kind in BEFORE}
        left = {kind: ids for kind, ids in left.items() if ids}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, f"still in the kernel: {left}"
    counts = ", ".join(f"{len(ids)} {kind}s" for kind, ids in BEFORE.items())
    return f"no BPF fds open; the kernel holds what it held before the first load ({counts})"


CHECKS = (kernel_features, installed_wheel, httptrace_check, load_and_attach_every_program, curl_to_http_server_ipv4,
          one_megabyte_body, seed_ten_megabytes, nginx_keepalive, connection_opened_before_the_tracer, ipv6_exchange,
          request_body, tls_exchange, clean_detach)


def userland() -> dict:
    """The distribution the checks run in: its release, Python, glibc and OpenSSL."""
    with open("/etc/os-release") as f:
        release = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    return {"distribution": release.get("PRETTY_NAME", "?").strip('"'), "python": platform.python_version(),
            "glibc": os.confstr("CS_GNU_LIBC_VERSION"), "openssl": ssl.OPENSSL_VERSION}


def main() -> int:
    global OUT, FAMILY, SEED_SERVER
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--family", choices=("fast", "compat"), required=True,
                        help="the program family httptrace must pick on this kernel")
    parser.add_argument("--seed-server", required=True, help="the static Go seed server")
    parser.add_argument("--only", nargs="*", help="run only these checks")
    args = parser.parse_args()
    OUT, FAMILY, SEED_SERVER = args.out, args.family, args.seed_server
    print(f"userland: {userland()}; expected family: {FAMILY}", flush=True)
    started = time.monotonic()
    BEFORE.update((kind, bpf_ids(kind)) for kind in ("prog", "map", "link"))
    for func in CHECKS:
        if not args.only or func.__name__ in args.only or func is kernel_features:
            check(func)
    ok = bool(RESULTS) and all(r["ok"] for r in RESULTS)
    passed = sum(r["ok"] for r in RESULTS)
    summary = {"ok": ok, "release": platform.release(), "userland": userland(), "expected_family": FAMILY,
               "family": PICKED.get("family"), "programs_line": PICKED.get("line"),
               "seconds": round(time.monotonic() - started, 1), "checks": RESULTS}
    with open(os.path.join(OUT, "result.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"guest checks on {platform.release()}: {passed} passed, {len(RESULTS) - passed} failed "
          f"in {summary['seconds']}s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
