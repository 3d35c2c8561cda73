"""deploy/: the Kubernetes DaemonSet and the systemd unit parse, ask for what httptrace needs, and
pass httptrace options that httptrace itself accepts."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from httptrace import cli

yaml = pytest.importorskip("yaml")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")


def _daemonset():
    with open(os.path.join(DEPLOY, "kubernetes", "httptrace-daemonset.yaml")) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    daemonsets = [d for d in documents if d["kind"] == "DaemonSet"]
    assert len(daemonsets) == 1 and daemonsets[0]["apiVersion"] == "apps/v1"
    return documents, daemonsets[0]


def test_daemonset_runs_on_the_hosts_pids_with_the_bpf_capabilities():
    documents, ds = _daemonset()
    namespaces = {d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"}
    assert ds["metadata"]["namespace"] in namespaces
    template = ds["spec"]["template"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["hostPID"] is True
    (container,) = pod["containers"]
    security = container["securityContext"]
    added = set(security.get("capabilities", {}).get("add", ()))
    assert security.get("privileged") is True or {"BPF", "PERFMON", "SYS_RESOURCE"} <= added


def test_daemonset_mounts_btf_cgroups_and_tracefs():
    _, ds = _daemonset()
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounted = {host_paths[m["name"]]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounted["/sys/kernel/btf"] == "/sys/kernel/btf"
    assert mounted["/sys/kernel/tracing"] == "/sys/kernel/tracing"
    env = {e["name"]: e.get("value") for e in container.get("env", ())}
    # the node's cgroup hierarchy, where httptrace is told to look for it
    assert env.get("HTTPTRACE_CGROUP2", "/sys/fs/cgroup") == mounted["/sys/fs/cgroup"]


def test_daemonset_args_are_httptrace_options_and_its_port_is_the_metrics_port():
    _, ds = _daemonset()
    template = ds["spec"]["template"]
    (container,) = template["spec"]["containers"]
    args = cli.parse_args([str(a) for a in container["args"]])
    assert args.metrics is not None and args.otlp_endpoint and args.log_format == "json"
    ports = {p["containerPort"] for p in container["ports"]}
    assert args.metrics[1] in ports
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(args.metrics[1])


def _unit_text() -> str:
    with open(os.path.join(DEPLOY, "systemd", "httptrace.service")) as f:
        return f.read()


def test_systemd_unit_runs_httptrace_with_valid_options_and_the_capabilities():
    text = _unit_text()
    values = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key] = value
    command = shlex.split(values["ExecStart"])
    assert os.path.basename(command[0]) == "httptrace"
    args = cli.parse_args(command[1:])
    assert args.metrics is not None and args.otlp_endpoint
    assert {"CAP_BPF", "CAP_PERFMON"} <= set(values["AmbientCapabilities"].split())
    assert set(values["AmbientCapabilities"].split()) <= set(values["CapabilityBoundingSet"].split())


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit as shipped, but starting this checkout's httptrace (verify checks the binary exists).
    httptrace = os.path.join(os.path.dirname(sys.executable), "httptrace")
    assert os.access(httptrace, os.X_OK), "the venv's httptrace entry point is missing: make build installs it"
    unit = tmp_path / "httptrace.service"
    unit.write_text(_unit_text().replace("/usr/local/bin/httptrace", httptrace))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and "httptrace.service" not in output, output
