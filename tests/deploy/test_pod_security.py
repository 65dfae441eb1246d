"""Whole pods against the `restricted` Pod Security Standard, the way admission judges them.

A namespace with `pod-security.kubernetes.io/enforce: restricted` rejects a pod when any of its
containers breaks a rule, so the host-chart examples of the chart README (Deployment and
StatefulSet, native and classic mode) and the demo value sets are checked container by
container, init containers included, after validating against the Kubernetes schemas.
The rules are those of the Pod Security Standards (baseline plus restricted), as far as a pod
spec shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .test_helm import (
    CI_SETS,
    K8S_VERSIONS,
    _host_chart,
    _host_statefulset,
    _pod_spec,
    _template,
    _validate,
)

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *(spec.get("initContainers") or []),
        *(spec.get("containers") or []),
        *(spec.get("ephemeralContainers") or []),
    ]


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What the `restricted` level would reject in this pod spec; empty when it passes."""
    problems: list[str] = []
    pod = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"pod: {field}")
    if pod.get("windowsOptions", {}).get("hostProcess"):
        problems.append("pod: hostProcess")
    if pod.get("runAsNonRoot") is False:
        problems.append("pod: runAsNonRoot false")
    if pod.get("runAsUser") == 0:
        problems.append("pod: runAsUser 0")
    if pod.get("seccompProfile", {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"pod: seccompProfile {pod['seccompProfile']}")
    for sysctl in pod.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"pod: sysctl {sysctl['name']}")
    selinux = pod.get("seLinuxOptions") or {}
    if selinux.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t"):
        problems.append("pod: seLinuxOptions.type")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    for container in _containers(spec):
        name = container["name"]
        context = container.get("securityContext") or {}

        def effective(key: str) -> Any:
            return context[key] if key in context else pod.get(key)  # noqa: B023

        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("windowsOptions", {}).get("hostProcess"):
            problems.append(f"{name}: hostProcess")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if effective("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (effective("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        added = set(capabilities.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {sorted(added)}")
        if added - BASELINE_CAPABILITIES:
            problems.append(f"{name}: adds non-baseline capabilities")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
        if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{name}: appArmorProfile Unconfined")
        if (context.get("seLinuxOptions") or {}).get("user") or (
            context.get("seLinuxOptions") or {}
        ).get("role"):
            problems.append(f"{name}: seLinuxOptions user or role")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort")
    return problems


def _pod_of(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _check(doc: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        _validate(doc, version)
    spec = _pod_of(doc)
    assert restricted_violations(spec) == [], json.dumps(spec, indent=1)
    assert len(_containers(spec)) >= 2, "the host app and the sidecar"


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_readme_deployment_example_is_restricted(mode: str, tmp_path: Path) -> None:
    docs = _template("--set", f"registry-proxy.sidecar.mode={mode}", chart=_host_chart(tmp_path))
    [deployment] = docs
    _check(deployment)
    [app] = [c for c in _pod_of(deployment)["containers"] if c["name"] == "my-app"]
    assert app["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_readme_statefulset_example_is_restricted(mode: str, tmp_path: Path) -> None:
    values = f"registry-proxy.journal.type=claimTemplate,registry-proxy.sidecar.mode={mode}"
    [statefulset] = _template("--set", values, chart=_host_statefulset(tmp_path))
    _check(statefulset)


@pytest.mark.parametrize("value_set", ["default", *CI_SETS])
def test_demo_pods_are_restricted(value_set: str) -> None:
    assert restricted_violations(_pod_spec(value_set)) == []


VIOLATIONS = {
    "app may escalate": (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True),
    "app keeps its capabilities": (("containers", 0, "securityContext", "capabilities"), {}),
    "pod may run as root": (("securityContext", "runAsNonRoot"), False),
    "seccomp unconfined": (("securityContext", "seccompProfile"), {"type": "Unconfined"}),
    "host network": (("hostNetwork",), True),
    "host path volume": (("volumes", 0), {"name": "x", "hostPath": {"path": "/"}}),
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_the_checker_catches_violations(name: str, tmp_path: Path) -> None:
    # Negative controls: one broken rule in the otherwise clean example is reported.
    [deployment] = _template(chart=_host_chart(tmp_path))
    spec = json.loads(json.dumps(_pod_of(deployment)))
    path, value = VIOLATIONS[name]
    target: Any = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert restricted_violations(spec), name
