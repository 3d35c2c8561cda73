"""Container attribution: cgroup v2 id -> cgroup path -> container.

The kernel puts the traced process's cgroup v2 id in each connection's open event
(`Connection.cgroup_id`, from bpf_get_current_cgroup_id()). That id is the inode number of the
process's directory in the cgroup v2 hierarchy, so the path is found by looking the inode up there;
container runtimes name those directories after the container (`docker-<id>.scope`,
`cri-containerd-<id>.scope`, `kubepods-burstable-pod<uid>.slice`, ...), which gives the container.

Lookups are cached by cgroup id. A miss first tries the connection's own process (`/proc/PID/cgroup`
names its v2 path; a stat of that path confirms the inode), then a walk of the hierarchy (rate
limited). Where the v2 path names no container (pure v1 hosts, where every process sits in the v2
root, or a runtime that only uses v1 controllers), the v1 lines of `/proc/PID/cgroup` are read too:
`4:memory:/docker/<id>` carries the container id as well.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from httptrace.exchange import Connection

RUNTIMES = ("docker", "containerd", "crio", "podman")

_HEX_ID = r"[0-9a-f]{12,64}"
# (regex, runtime), tried on each component of the path; the deepest component that matches wins.
_CONTAINER_PATTERNS = [
    (re.compile(rf"docker-({_HEX_ID})\.scope"), "docker"),               # systemd cgroup driver
    (re.compile(rf"cri-containerd-({_HEX_ID})\.scope"), "containerd"),   # containerd CRI, systemd driver
    (re.compile(rf"crio-(?:conmon-)?({_HEX_ID})\.scope"), "crio"),       # CRI-O (its conmon: same container)
    (re.compile(rf"libpod-(?:conmon-)?({_HEX_ID})\.scope"), "podman"),   # podman, systemd driver
    (re.compile(rf"libpod-({_HEX_ID})"), "podman"),                      # podman, cgroupfs driver
]
# cgroupfs-driver layouts: the runtime is named by the parent directory, the id is the whole component.
_PARENT_RUNTIME = {"docker": "docker", "containerd": "containerd", "crio": "crio", "libpod_parent": "podman"}
_BARE_ID = re.compile(rf"({_HEX_ID})")
# kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice (systemd driver),
# or kubepods/burstable/pod<uid> (cgroupfs driver).
_POD_SYSTEMD = re.compile(r"kubepods(?:-[a-z]+)*-pod([0-9a-fA-F_-]{8,64})\.slice")
_POD_CGROUPFS = re.compile(r"pod([0-9a-fA-F-]{8,64})")


@dataclass(frozen=True)
class Container:
    id: str                  # as found in the path: normally 64 hex digits
    runtime: Optional[str]   # docker, containerd, crio, podman; None when only a Kubernetes
                             # cgroupfs layout names it (kubepods/<qos>/pod<uid>/<id>)
    pod_uid: Optional[str]   # Kubernetes pod UID with dashes, when the path is under kubepods
    cgroup: str              # the cgroup path, relative to the hierarchy's root ("/system.slice/...")

    def as_dict(self) -> Dict[str, Optional[str]]:
        return {"id": self.id, "runtime": self.runtime, "pod_uid": self.pod_uid, "cgroup": self.cgroup}


def container_from_path(path: str) -> Optional[Container]:
    """The container a cgroup path names, or None (a host process)."""
    parts = [p for p in path.split("/") if p]
    found: Optional[Tuple[str, Optional[str]]] = None
    pod_uid: Optional[str] = None
    in_kubepods = False
    for index, part in enumerate(parts):
        if part.startswith("kubepods"):
            in_kubepods = True
            match = _POD_SYSTEMD.fullmatch(part)
            if match:
                pod_uid = match.group(1).replace("_", "-")
            continue
        if in_kubepods and pod_uid is None:
            match = _POD_CGROUPFS.fullmatch(part)
            if match:
                pod_uid = match.group(1)
                continue
        for pattern, runtime in _CONTAINER_PATTERNS:
            match = pattern.fullmatch(part)
            if match:
                found = (match.group(1), runtime)
                break
        else:
            if _BARE_ID.fullmatch(part) and index:
                parent = parts[index - 1]
                if parent in _PARENT_RUNTIME:
                    found = (part, _PARENT_RUNTIME[parent])
                elif pod_uid is not None:   # kubepods/<qos>/pod<uid>/<id>: the runtime is not named
                    found = (part, None)
    if found is None:
        return None
    return Container(id=found[0], runtime=found[1], pod_uid=pod_uid, cgroup="/" + "/".join(parts))


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


CGROUP2_ENV = "HTTPTRACE_CGROUP2"


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup (unified), /sys/fs/cgroup/unified
    (hybrid), or None (v1 only). A mount of the hierarchy's root is preferred over a bind mount of a
    sub-tree. $HTTPTRACE_CGROUP2 overrides: in a Kubernetes pod, the pod's own /sys/fs/cgroup is its
    cgroup namespace's view, and the host's hierarchy is mounted elsewhere (deploy/kubernetes/)."""
    override = os.environ.get(CGROUP2_ENV)
    if override:
        return override
    best: Optional[str] = None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep or right.split(" ", 1)[0] != "cgroup2":
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        root, mount_point = _unescape_mountinfo(fields[3]), _unescape_mountinfo(fields[4])
        if root == "/":
            return mount_point
        best = best or mount_point
    return best


def proc_cgroups(pid: int) -> Dict[str, str]:
    """/proc/PID/cgroup as {hierarchy: path}: "" is the v2 line (0::/path), v1 lines are keyed by
    their controllers ("memory", "cpu,cpuacct", "name=systemd")."""
    out: Dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3:
                    out[parts[1]] = parts[2]
    except OSError:
        pass
    return out


class ContainerResolver:
    """Connection -> Container (or None on the host), cached; safe to share between threads."""

    RESCAN_INTERVAL_S = 1.0    # a walk of the whole hierarchy at most this often
    NEGATIVE_TTL_S = 5.0       # an id found nowhere is tried again after this long
    PID_TTL_S = 10.0           # v1 fallback results per pid
    CACHE_LIMIT = 65536

    def __init__(self, mount: Optional[str] = None, mountinfo: str = "/proc/self/mountinfo"):
        self.mount = mount if mount is not None else cgroup2_mount(mountinfo)
        self._by_id: Dict[int, Tuple[Optional[str], float]] = {}     # cgroup id -> (path or None, when)
        self._by_pid: Dict[int, Tuple[Optional[Container], float]] = {}
        self._containers: Dict[str, Optional[Container]] = {}        # path -> parsed
        self._last_scan = 0.0
        self._lock = threading.Lock()

    # ---- cgroup id -> path ------------------------------------------------------------------

    def path_of(self, cgroup_id: int, pid: int = 0) -> Optional[str]:
        """The v2 path of a cgroup id ("/system.slice/docker-….scope"), or None when not found."""
        if not cgroup_id or self.mount is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._by_id.get(cgroup_id)
            if cached is not None and (cached[0] is not None or now - cached[1] < self.NEGATIVE_TTL_S):
                return cached[0]
            path = self._from_pid(cgroup_id, pid) if pid else None
            if path is None and now - self._last_scan >= self.RESCAN_INTERVAL_S:
                self._scan()
                self._last_scan = now
                hit = self._by_id.get(cgroup_id)
                path = hit[0] if hit is not None else None
            if len(self._by_id) >= self.CACHE_LIMIT:
                self._by_id.clear()
            self._by_id[cgroup_id] = (path, now)
            return path

    def _from_pid(self, cgroup_id: int, pid: int) -> Optional[str]:
        """The process's own v2 path, if its directory is the one with this inode (it may have moved)."""
        path = proc_cgroups(pid).get("")
        if path is None:
            return None
        mount: str = self.mount  # type: ignore[assignment]  # path_of() returns before this without a mount
        try:
            if os.stat(mount + path).st_ino == cgroup_id:
                return path
        except OSError:
            pass
        return None

    def _scan(self) -> None:
        """Walk the hierarchy, recording every directory's inode."""
        mount = self.mount.rstrip("/")  # type: ignore[union-attr]  # path_of() returns before this without a mount
        found: Dict[int, str] = {}
        stack = [mount]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            found[entry.inode()] = entry.path[len(mount):]
                            stack.append(entry.path)
            except OSError:   # removed while walking
                continue
        try:
            found[os.stat(mount).st_ino] = "/"
        except OSError:
            pass
        now = time.monotonic()
        for inode, path in found.items():
            self._by_id[inode] = (path, now)

    # ---- path -> container ------------------------------------------------------------------

    def _container_of_path(self, path: str) -> Optional[Container]:
        try:
            return self._containers[path]
        except KeyError:
            if len(self._containers) >= self.CACHE_LIMIT:
                self._containers.clear()
            container = self._containers[path] = container_from_path(path)
            return container

    def _from_proc(self, pid: int) -> Optional[Container]:
        """The container /proc/PID/cgroup names (cached per pid): its v2 line (for a connection without
        a cgroup id: its open event was lost) or a v1 line (runtimes that only use v1 controllers)."""
        now = time.monotonic()
        cached = self._by_pid.get(pid)
        if cached is not None and now - cached[1] < self.PID_TTL_S:
            return cached[0]
        container = None
        for _, path in sorted(proc_cgroups(pid).items()):   # "" (the v2 line) first
            container = self._container_of_path(path)
            if container is not None:
                break
        if len(self._by_pid) >= self.CACHE_LIMIT:
            self._by_pid.clear()
        self._by_pid[pid] = (container, now)
        return container

    def container(self, cgroup_id: int, pid: int = 0) -> Optional[Container]:
        path = self.path_of(cgroup_id, pid)
        if path is not None:
            container = self._container_of_path(path)
            if container is not None:
                return container
        return self._from_proc(pid) if pid else None

    def for_connection(self, connection: Connection) -> Optional[Container]:
        return self.container(connection.cgroup_id, connection.pid)


_default: Optional[ContainerResolver] = None


def default_resolver() -> ContainerResolver:
    """One resolver per process, made on first use (the outputs share it)."""
    global _default
    if _default is None:
        _default = ContainerResolver()
    return _default
