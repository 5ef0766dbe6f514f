"""Checks of a pod spec against the Kubernetes *restricted* Pod Security Standard.

Pure functions over manifests, used by the tests for every pod the operator renders and
by the chart's tests for the operator's own pod. Rules follow
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted, latest).
"""

from __future__ import annotations

from typing import Any, Iterator

ALLOWED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_ANNOTATIONS = ("seccomp.security.alpha.kubernetes.io/pod", "container.seccomp.security.alpha.kubernetes.io/")
# The same rules for the CRD, as CEL over the annotations map.
ANNOTATION_CEL = [
    {"rule": f"self.all(k, !k.startsWith('{APPARMOR_ANNOTATION}')"
             " || self[k] == 'runtime/default' || self[k].startsWith('localhost/'))",
     "message": "AppArmor annotations may only be runtime/default or localhost/<profile>: pods of an RLHFJob run "
                "user code under the restricted Pod Security Standard"},
    {"rule": f"self.all(k, k != '{SECCOMP_ANNOTATIONS[0]}' && !k.startsWith('{SECCOMP_ANNOTATIONS[1]}'))",
     "message": "seccomp annotations are not allowed: the operator sets seccompProfile RuntimeDefault on every pod"},
]


def annotation_problems(annotations: dict[str, str]) -> list[str]:
    """Pod annotations that would weaken the restricted profile the operator renders: AppArmor
    other than the runtime's default or a node's own profile (``unconfined`` turns it off), and
    the deprecated seccomp annotations, which override nothing useful here and, differing from the
    rendered ``seccompProfile``, make the API server refuse the pod."""
    problems = []
    for key, value in sorted(annotations.items()):
        if key.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" and not value.startswith("localhost/"):
            problems.append(f"{key}: {value!r} is not allowed; use runtime/default or localhost/<profile>"
                            " (pods of an RLHFJob run user code under the restricted Pod Security Standard)")
        if key == SECCOMP_ANNOTATIONS[0] or key.startswith(SECCOMP_ANNOTATIONS[1]):
            problems.append(f"{key}: seccomp annotations are not allowed; the operator sets seccompProfile"
                            " RuntimeDefault on every pod (remove the annotation)")
    return problems


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(kind) or []:
            yield f"{kind}[{c.get('name', '?')}]", c


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every way ``pod`` (a PodSpec) breaks the restricted profile; empty when it complies."""
    problems: list[str] = []
    psc = pod.get("securityContext") or {}

    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            problems.append(f"spec.{host} must not be true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"volume {volume.get('name')}: type {sorted(kinds - ALLOWED_VOLUME_TYPES)} is not allowed")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')} is not allowed")
    if psc.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser must not be 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append("securityContext.seccompProfile.type must be RuntimeDefault or Localhost")
    selinux = (psc.get("seLinuxOptions") or {})
    if selinux.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"):
        problems.append("securityContext.seLinuxOptions.type is not allowed")
    if (psc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append("securityContext.appArmorProfile must not be Unconfined")

    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged must not be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: securityContext.capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            problems.append(f"{where}: capabilities.add may only hold NET_BIND_SERVICE (has {sorted(extra)})")
        if not (sc.get("runAsNonRoot") is True or (psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)):
            problems.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost (pod or container)")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: procMount must be Default")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{where}: appArmorProfile must not be Unconfined")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']} is not allowed")
    return problems


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec inside a rendered object (Pods, workload templates, RayJob groups)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        yield "Pod", spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield f"{kind}.template", (spec.get("template") or {}).get("spec") or {}
    elif kind == "RayJob":
        cluster = spec.get("rayClusterSpec") or {}
        yield "head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs") or []:
            yield f"workerGroup[{group['groupName']}]", group["template"]["spec"]
        if spec.get("submitterPodTemplate"):
            yield "submitter", spec["submitterPodTemplate"]["spec"]
