"""A rendered RayJob's head pod, run on this machine as its containers would see it.

No container runtime here, so the pod is put together from what Linux gives root: a private
mount, network and PID namespace (``unshare``) in which

- every volume of the rendered head pod appears at its mount path: the snapshot ConfigMap's
  items (read-only), memory-backed emptyDirs as tmpfs of their ``sizeLimit``, PVCs as host
  directories the test names, owned by the pod's ``fsGroup`` as the kubelet makes them;
  directories the host lacks (``/etc/rlhf``) are made on a tmpfs overlay, so the host never sees them;
- ``/tmp`` is the pod's own, ``/home/ray`` the image's home; the root file system and the home
  are read-only as ``readOnlyRootFilesystem`` makes them, and only loopback exists, on
  which the head Service's DNS names resolve (as cluster DNS would resolve a headless Service);
- the Ray container runs KubeRay's command for it (``support.kuberay``: ``ray start --head``
  with the parameters KubeRay derives from the pod's limits) with the rendered env, the env
  KubeRay injects and the worker image's ``ENV``, as the rendered non-root user;
- the submitter runs KubeRay's submit script with the env KubeRay gives it, and a poller
  reads the progress endpoint with the operator's URL, interval, timeout and parser.

Everything in the namespace dies with it (``--kill-child``, PID namespace): killing the run
is a pod eviction.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from support import kuberay

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "/mnt/podview"  # the test's window into the pod: logs, reports, exit codes
KEEP = "/mnt/podview-keep"  # where trees wait while a tmpfs covers their parent
IMAGE_WORKDIR = "/home/ray"


def image_env() -> dict[str, str]:
    """The worker image's last ``ENV`` instruction (workers/Dockerfile), as the container gets it."""
    text = (ROOT / "workers" / "Dockerfile").read_text().replace("\\\n", " ")
    block = [line for line in text.splitlines() if line.startswith("ENV HOME=")][-1]
    return dict(pair.split("=", 1) for pair in shlex.split(block[len("ENV "):]))


def supported() -> Optional[str]:
    """Why the pod view cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces and bind mounts)"
    for tool in ("unshare", "setpriv", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "true"], capture_output=True)
    return None if probe.returncode == 0 else f"unshare refused: {probe.stderr.decode().strip()}"


@dataclass
class HeadPod:
    """One run of the head pod (and its submitter, and the operator's poller)."""

    rayjob: dict[str, Any]
    config_map: dict[str, Any]
    cluster: str
    claims: dict[str, Path]  # PVC claimName -> host directory
    workdir: Path
    home: Path  # the image's /home/ray, kept between runs (the image ships the compiled ops)
    poll_url: str
    poll_interval: float
    poll_timeout: float
    proc: Optional[subprocess.Popen] = None
    _script: list[str] = field(default_factory=list)

    @property
    def results(self) -> Path:
        return self.workdir / "results"

    @property
    def namespace(self) -> str:
        return self.rayjob["metadata"]["namespace"]

    # ------------------------------------------------------------------ building the script

    def _head(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        group = self.rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
        return group, group["template"]["spec"], group["template"]["spec"]["containers"][0]

    def _sh(self, *commands: str) -> None:
        self._script.extend(commands)

    def _mount_point(self, path: str, tops: set[str]) -> None:
        top = "/" + path.strip("/").split("/")[0]
        if not os.path.isdir(top):
            raise ValueError(f"{path}: the pod view overlays existing top-level directories only; use one under /mnt")
        if not os.path.exists(path) and top not in tops:
            tops.add(top)
            name = top.strip("/")
            self._sh(f"mkdir -p $STAGE/{name}/up $STAGE/{name}/work",
                     f"mount -t overlay overlay -o lowerdir={top},upperdir=$STAGE/{name}/up,workdir=$STAGE/{name}/work {top}")
        self._sh(f"mkdir -p {shlex.quote(path)}")

    def _volumes(self, pod: dict[str, Any], container: dict[str, Any], tops: set[str]) -> None:
        uid, gid = pod["securityContext"]["runAsUser"], pod["securityContext"].get("fsGroup", 0)
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in container["volumeMounts"]:
            volume, path = volumes[mount["name"]], mount["mountPath"]
            if path == "/tmp":  # made by _cover, which keeps this machine's Python visible beneath it
                assert volume.get("emptyDir") == {}, volume
                continue
            self._mount_point(path, tops)
            if "configMap" in volume:
                assert volume["configMap"]["name"] == self.config_map["metadata"]["name"], volume
                source = self.workdir / "volumes" / mount["name"]
                source.mkdir(parents=True)
                for item in volume["configMap"]["items"]:
                    (source / item["path"]).write_text(self.config_map["data"][item["key"]])
                self._sh(f"mount --bind {source} {path}")
            elif "emptyDir" in volume and volume["emptyDir"].get("medium") == "Memory":
                size = kuberay._value(volume["emptyDir"]["sizeLimit"])
                self._sh(f"mount -t tmpfs -o size={size},mode=1777 tmpfs {path}")
            elif "emptyDir" in volume:
                source = self.workdir / "volumes" / mount["name"]
                source.mkdir(parents=True)
                self._sh(f"mount --bind {source} {path}", f"chown {uid}:{gid} {path}")
            elif "persistentVolumeClaim" in volume:
                source = self.claims[volume["persistentVolumeClaim"]["claimName"]]
                self._sh(f"mount --bind {source} {path}", f"chgrp -R {gid} {path}", f"chmod -R g+rwX {path}")
            else:
                raise ValueError(f"volume {mount['name']}: the pod view knows no {sorted(volume)}")
            if mount.get("readOnly"):
                self._sh(f"mount -o remount,bind,ro {path}")

    def _read_only_root(self, container: dict[str, Any]) -> None:
        """``readOnlyRootFilesystem``: every mount but the container's writable volumes, /tmp,
        the kernel's file systems and the test's window becomes read-only, as the image's layers are."""
        assert container["securityContext"].get("readOnlyRootFilesystem") is True, "rendered without a read-only root"
        writable = {RESULTS, "/tmp"} | {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        keep = " ".join(shlex.quote(p) for p in sorted(writable))
        self._sh(f"for m in $(findmnt -rn -o TARGET); do case \" {keep} \" in *\" $m \"*) continue;; esac;"
                 " case $m in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|$STAGE|$STAGE/*) continue;; esac;"
                 " mount -o remount,bind,ro \"$m\" 2>/dev/null || echo \"pod view: $m stays writable\"; done",
                 f"mount -o remount,bind,ro / && mount -o remount,bind,ro {IMAGE_WORKDIR}")  # these must hold

    def _cover(self, directory: str, options: str, tops: set[str]) -> None:
        """A fresh tmpfs over ``directory`` (the pod's own /tmp; a /root the non-root user may
        enter), with the trees the pod's Python needs bound back beneath it: the interpreter
        (under /root here, /usr in the image), the venv and the checkout, wherever the machine
        keeps them (a CI clone may sit under /tmp)."""
        needed = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, str(ROOT))}
        keep = sorted(p for p in needed if p.startswith(directory + "/"))
        keep = [p for p in keep if not any(p.startswith(q + "/") for q in keep)]  # outermost only
        name = directory.strip("/")
        for i, path in enumerate(keep):
            self._mount_point(f"{KEEP}/{name}{i}", tops)
            self._sh(f"mount --bind {path} {KEEP}/{name}{i}")
        self._sh(f"mount -t tmpfs -o {options} tmpfs {directory}")
        for i, path in enumerate(keep):
            self._sh(f"mkdir -p {path}", f"mount --bind {KEEP}/{name}{i} {path}")

    def build(self) -> Path:
        group, pod, container = self._head()
        uid, gid = pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
        self.results.mkdir(parents=True)
        (self.workdir / "stage").mkdir()
        os.chown(self.results, uid, gid)
        self._script = ["set -eu", f"STAGE={self.workdir}/stage", "mount -t tmpfs tmpfs $STAGE", "ip link set lo up"]
        tops: set[str] = set()
        for path in (RESULTS, IMAGE_WORKDIR, "/etc/hosts"):
            self._mount_point(os.path.dirname(path) if path == "/etc/hosts" else path, tops)
        self._sh(f"mount --bind {self.results} {RESULTS}", f"mount --bind {self.home} {IMAGE_WORKDIR}")
        self._volumes(pod, container, tops)  # after the home: the cache emptyDir lies inside it
        service = kuberay.head_service_name(self.cluster)
        names = [f"{service}.{self.namespace}.svc.{kuberay.CLUSTER_DOMAIN}", f"{service}.{self.namespace}.svc", service,
                 kuberay.rayjob_head_service_name(self.rayjob["metadata"]["name"]) + f".{self.namespace}.svc"]
        self._sh(f"echo '127.0.0.1 {' '.join(names)}' >> /etc/hosts")
        self._cover("/root", "mode=755", tops)
        self._cover("/tmp", "mode=1777", tops)  # the rendered /tmp emptyDir (see _volumes)
        self._read_only_root(container)
        (self.results / "pod.sh").write_text(self._pod_script(group, container))
        self._sh(f"cd {IMAGE_WORKDIR}",
                 f"exec setpriv --reuid={uid} --regid={gid} --clear-groups --inh-caps=-all "
                 f"env -i PATH={shlex.quote(self._path())} bash {RESULTS}/pod.sh")
        script = self.workdir / "namespace.sh"
        script.write_text("\n".join(self._script) + "\n")
        return script

    def _path(self) -> str:
        return f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"

    def _env(self, values: dict[str, str]) -> str:
        return "env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in values.items())

    def _pod_script(self, group: dict[str, Any], container: dict[str, Any]) -> str:
        """As the pod's user: the Ray container, the submitter pod, the operator's poller."""
        params = kuberay.ray_start_params(group, "head", self.cluster, self.namespace)
        start = kuberay.ray_start_command("head", params)
        rendered = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        head_env = {**image_env(), **rendered, "PATH": self._path(),
                    **kuberay.injected_env("head", self.cluster, self.namespace, start, existing=tuple(rendered))}
        rayjob = json.loads(json.dumps(self.rayjob))
        rayjob["status"] = {"dashboardURL": f"{kuberay.head_service_name(self.cluster)}.{self.namespace}.svc."
                                            f"{kuberay.CLUSTER_DOMAIN}:{kuberay.DASHBOARD_PORT}",
                            "jobId": f"{rayjob['metadata']['name']}-{self.cluster[-5:]}"}
        image = container["image"]
        submitter = kuberay.submitter_job(rayjob, image)["spec"]["template"]["spec"]["containers"][0]
        submitter_env = {**image_env(), "PATH": self._path(), **{e["name"]: e["value"] for e in submitter["env"]}}
        command, args = kuberay.container_command(start)
        poller = [sys.executable, str(Path(__file__).with_name("progress_poller.py")), self.poll_url,
                  str(self.poll_interval), str(self.poll_timeout), f"{RESULTS}/reports.jsonl"]
        return "\n".join([
            "set -u",
            f"touch /home/ray/probe 2> {RESULTS}/root-write.log",  # as the pod's user, before Ray starts
            f"touch {head_env.get('XDG_CACHE_HOME', '/home/ray/.cache')}/probe 2> {RESULTS}/cache-write.log",
            f"{self._env(head_env)} {shlex.join(command)} {shlex.quote(args[0])} > {RESULTS}/head.log 2>&1 &",
            f"{self._env({**head_env, 'PYTHONUNBUFFERED': '1'})} {shlex.join(poller)} > {RESULTS}/poller.log 2>&1 &",
            f"{self._env(submitter_env)} {shlex.join(submitter['command'])} {shlex.quote(submitter['args'][0])} "
            f"> {RESULTS}/submitter.log 2>&1; echo $? > {RESULTS}/submitter.rc",
            f"{self._env(submitter_env)} ray job status --address http://{rayjob['status']['dashboardURL']} "
            f"{rayjob['status']['jobId']} > {RESULTS}/job-status.log 2>&1 || true",
            f"sleep {2 * self.poll_interval + self.poll_timeout}",  # the poller's last look
            f"touch {RESULTS}/done",
        ]) + "\n"

    # ------------------------------------------------------------------ running

    def start(self) -> "HeadPod":
        script = self.build()
        log = (self.workdir / "namespace.log").open("w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--net", "--pid", "--fork", "--mount-proc",
             "--kill-child", "bash", str(script)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the head pod did not finish in {timeout:.0f} s\n{self.logs()}") from None

    def kill(self) -> None:
        """Evict the pod: everything in its namespaces dies at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def reports(self) -> list[dict[str, Any]]:
        path = self.results / "reports.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for name in ("namespace.log",):
            parts.append(f"--- {name}\n{(self.workdir / name).read_text()[-tail:]}")
        for path in sorted(self.results.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def driver_log(self) -> str:
        return (self.results / "submitter.log").read_text(errors="replace")


def wait_until(predicate, timeout: float, what: str, pod: HeadPod):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if pod.proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached\n{pod.logs()}")


def checkpoint_steps(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for d in directory.glob("**/step_*") if (m := re.fullmatch(r"step_(\d+)", d.name))
                  and (d / "state.json").is_file())
