"""Container attribution: cgroup paths as runtimes name them, the v2 mount, the id -> path lookup."""
from __future__ import annotations

import os

import pytest

from httptrace.containers import Container, ContainerResolver, cgroup2_mount, container_from_path

ID = "3f2a9c1b0d4e" + "5a6b7c8d9e0f" * 4 + "0123"   # 64 hex digits
UID = "2b4c6d8e-1f3a-4b5c-9d7e-0a1b2c3d4e5f"


@pytest.mark.parametrize("path, runtime, pod_uid", [
    (f"/system.slice/docker-{ID}.scope", "docker", None),
    (f"/docker/{ID}", "docker", None),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
     f"cri-containerd-{ID}.scope", "containerd", UID),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
     f"crio-{ID}.scope", "crio", UID),
    (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-conmon-{ID}.scope", "crio", UID),
    (f"/machine.slice/libpod-{ID}.scope", "podman", None),
    (f"/machine.slice/libpod-{ID}.scope/container", "podman", None),
    (f"/libpod_parent/libpod-{ID}", "podman", None),
    (f"/kubepods/burstable/pod{UID}/{ID}", None, UID),
    (f"/containerd/{ID}", "containerd", None),
])
def test_runtime_layouts(path, runtime, pod_uid):
    container = container_from_path(path)
    assert container == Container(id=ID, runtime=runtime, pod_uid=pod_uid, cgroup=path.rstrip("/"))


@pytest.mark.parametrize("path", ["/", "/system.slice/nginx.service", "/user.slice/user-0.slice/session-1.scope",
                                  "/system.slice/docker.service", "/docker", "/process_api/715948560d35b454"])
def test_host_paths_name_no_container(path):
    assert container_from_path(path) is None


def test_as_dict_is_the_json_shape():
    container = container_from_path(f"/system.slice/docker-{ID}.scope")
    assert container.as_dict() == {"id": ID, "runtime": "docker", "pod_uid": None,
                                   "cgroup": f"/system.slice/docker-{ID}.scope"}


def test_cgroup2_mount_hybrid_and_unified(tmp_path):
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(str(hybrid)) == "/sys/fs/cgroup/unified"
    unified = tmp_path / "unified"
    unified.write_text(   # a bind of a sub-tree first, then the root of the hierarchy (preferred)
        "50 40 0:26 /kubepods.slice /host/cg rw shared:5 - cgroup2 cgroup2 rw,nsdelegate\n"
        "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroup2_mount(str(unified)) == "/sys/fs/cgroup"
    v1 = tmp_path / "v1"
    v1.write_text("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert cgroup2_mount(str(v1)) is None
    escaped = tmp_path / "escaped"
    escaped.write_text("41 31 0:38 / /mnt/cgroup\\040two rw - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(str(escaped)) == "/mnt/cgroup two"


def test_this_hosts_cgroup2_mount_is_a_cgroup2_file_system():
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy on this host")
    assert os.path.exists(os.path.join(mount, "cgroup.procs"))


def test_resolver_finds_a_directory_by_its_inode(tmp_path):
    """The id is a directory's inode: any directory tree shows the lookup, including one made after
    the first miss (the hierarchy is walked again)."""
    scope = tmp_path / "system.slice" / f"docker-{ID}.scope"
    scope.mkdir(parents=True)
    resolver = ContainerResolver(mount=str(tmp_path))
    resolver.RESCAN_INTERVAL_S = 0.0
    inode = os.stat(scope).st_ino
    assert resolver.path_of(inode) == f"/system.slice/docker-{ID}.scope"
    assert resolver.container(inode) == container_from_path(f"/system.slice/docker-{ID}.scope")
    host = tmp_path / "system.slice" / "nginx.service"
    host.mkdir()
    assert resolver.path_of(os.stat(host).st_ino) == "/system.slice/nginx.service"
    assert resolver.container(os.stat(host).st_ino) is None
    assert resolver.path_of(0) is None


def test_unknown_id_is_not_rescanned_on_every_miss(tmp_path):
    resolver = ContainerResolver(mount=str(tmp_path))
    resolver.RESCAN_INTERVAL_S = 3600.0
    assert resolver.path_of(1) in (None, "/")   # the first miss walks (tmp_path's own inode is not 1)
    late = tmp_path / f"docker-{ID}.scope"
    late.mkdir()
    assert resolver.path_of(os.stat(late).st_ino) is None   # within the interval: no second walk


def test_the_current_process_is_resolved_through_proc(tmp_path):
    """Our own cgroup id: /proc/self/cgroup's v2 path, confirmed by the inode."""
    resolver = ContainerResolver()
    if resolver.mount is None:
        pytest.skip("no cgroup v2 hierarchy on this host")
    path = open("/proc/self/cgroup").read().split("0::", 1)[1].splitlines()[0]
    inode = os.stat(resolver.mount + path).st_ino
    resolver.RESCAN_INTERVAL_S = 3600.0
    resolver._last_scan = float("inf")   # no walk: the answer must come from /proc/PID/cgroup
    assert resolver.path_of(inode, os.getpid()) == path


def test_the_hierarchy_can_be_named_by_the_environment(tmp_path, monkeypatch):
    """In a Kubernetes pod the node's hierarchy is mounted elsewhere (deploy/kubernetes/)."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    monkeypatch.setenv("HTTPTRACE_CGROUP2", "/host/sys/fs/cgroup")
    assert cgroup2_mount(str(mountinfo)) == "/host/sys/fs/cgroup"
