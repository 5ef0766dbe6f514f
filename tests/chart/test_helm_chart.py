"""The Helm chart, linted and rendered with Helm's own engine (helm-python-sdk, no helm binary).

Every value set below is linted and rendered; every rendered core object is validated with
kubernetes-validate; RBAC is listed rule by rule against the operator's needs; the operator pod is
checked against the restricted Pod Security Standard; bad values must fail the schema.
"""

from __future__ import annotations

import base64
import copy
import datetime
import re
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")

from k8s_schemas import core_errors  # noqa: E402
from rlhf_api.podsecurity import pod_specs, restricted_violations  # noqa: E402

helm.disable_logging()

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rlhf-operator"
CRD_FILE = ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml"
RELEASE, NAMESPACE = "rlhf-operator", "rlhf-system"
# True after a local `helm dependency build` (the archive is git-ignored, never committed).
KUBERAY_FETCHED = any((CHART / "charts").glob("kuberay-operator*"))

NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": NAMESPACED,
    "cluster-wide": {"watchNamespaces": []},
    "webhook-cert-manager": {"webhook": {"certManager": {"enabled": True}}},
    "webhook-cert-manager-cluster-issuer": {
        **NAMESPACED,
        "webhook": {"failurePolicy": "Ignore", "certManager": {
            "enabled": True, "issuerRef": {"kind": "ClusterIssuer", "name": "corp-ca"}}},
    },
    "webhook-self-signed": {"webhook": {"enabled": True, "certManager": {"enabled": False}, "port": 10250}},
    "webhook-off": {"webhook": {"enabled": False}},
    "metrics-servicemonitor": {"metrics": {"enabled": True, "serviceMonitor": {
        "enabled": True, "interval": "15s", "scrapeTimeout": "10s", "labels": {"release": "prom"}}}},
    "metrics-off": {"metrics": {"enabled": False}},
    "peering-cluster-wide": {"replicas": 2},
    "peering-namespaced": {"replicas": 3, **NAMESPACED},
    "peering-one-replica": {"peering": {"enabled": True, "name": "rlhf-peers", "installCRDs": False}},
    "kuberay-off": {"kuberay-operator": {"enabled": False}},
    "no-rbac-external-sa": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "platform-ops"}},
    "crds-not-installed": {"crds": {"install": False}},
    "crds-not-kept": {"crds": {"keep": False}},
    "openshift-style": {"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}},
    "everything": {
        **NAMESPACED,
        "fullnameOverride": "rlhf",
        "replicas": 2,
        "image": {"repository": "registry.example.com/rlhf/operator", "tag": "1.2.3",
                  "digest": "sha256:" + "a" * 64, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}, "other-regcred"],
        "workerImage": "registry.example.com/rlhf/workers:1.2.3",
        "progress": {"intervalSeconds": 5, "stallSeconds": 120.5},
        "logLevel": "DEBUG",
        "extraEnv": [{"name": "RLHF_PROGRESS_TIMEOUT", "value": "3"}],
        "health": {"port": 8081},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "node-role", "operator": "In", "values": ["platform"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "rlhf-operator"}}}],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "ml-platform"},
        "podLabels": {"example.com/cost-center": "ml"},
        "podSecurityContext": {"runAsUser": 20000, "runAsGroup": 20000, "fsGroup": 20000,
                               "seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
        "serviceAccount": {"annotations": {"iam.example.com/role": "rlhf"}},
        "webhook": {"certManager": {"enabled": True}, "timeoutSeconds": 5},
        "metrics": {"service": {"port": 9090, "annotations": {"prometheus.io/scrape": "true"}},
                    "serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.1/32"]},
    },
    "network-policy-cluster-wide": {"networkPolicy": {"enabled": True}},
}

# Exactly what the operator may do (group, resource) -> verbs; nothing else is ever granted.
WORKLOAD_RULES = {
    ("rlhf.dev", "rlhfjobs"): {"get", "list", "watch", "patch"},
    ("rlhf.dev", "rlhfjobs/status"): {"get", "patch", "update"},
    ("ray.io", "rayjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "create", "delete"},  # the code-check pod only (no list or watch: launch reads it by name)
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
CRD_DISCOVERY = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
NAMESPACE_SCAN = {("", "namespaces"): {"get", "list", "watch"}}
NAMESPACED_PEERING = {("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}
CLUSTER_PEERING = {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"}}
# With the webhook only: it asks whether a job's creator may read each Secret the job names.
SECRET_REVIEW = {("authorization.k8s.io", "subjectaccessreviews"): {"create"}}

# Kinds that are not core Kubernetes: checked structurally, not with kubernetes-validate.
EXTERNAL_KINDS = {
    ("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("kopf.dev/v1", "KopfPeering"), ("kopf.dev/v1", "ClusterKopfPeering"),
}


# --------------------------------------------------------------------------- helpers


@lru_cache(maxsize=1)
def chart() -> Any:
    return helm.Chart.load(str(CHART))


@lru_cache(maxsize=None)
def _render(key: str) -> tuple[tuple[str, str], ...]:
    out = chart().render(copy.deepcopy(SCENARIOS[key]), name=RELEASE, namespace=NAMESPACE)
    return tuple(sorted(out.items()))


def render_values(values: dict[str, Any]) -> dict[str, str]:
    return chart().render(values, name=RELEASE, namespace=NAMESPACE)


LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def objects_of(rendered: dict[str, str] | tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    items = rendered.items() if isinstance(rendered, dict) else rendered
    objs = []
    for path, text in items:
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.load_all(text, Loader=LOADER):
            if doc:
                objs.append(doc)
    return objs


@lru_cache(maxsize=None)
def _objects(key: str) -> tuple[dict[str, Any], ...]:
    return tuple(objects_of(_render(key)))


def objects(key: str) -> list[dict[str, Any]]:
    """The parsed objects of a scenario (cached and shared: copy before mutating)."""
    return list(_objects(key))


def notes(key: str) -> str:
    return next(text for path, text in _render(key) if path.endswith("NOTES.txt"))


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def deployment(key: str) -> dict[str, Any]:
    return one(objects(key), "Deployment")


def container(key: str) -> dict[str, Any]:
    return deployment(key)["spec"]["template"]["spec"]["containers"][0]


def env(key: str) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(key).get("env", [])}


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                out.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return out


def merge(*maps: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for m in maps:
        for k, v in m.items():
            out.setdefault(k, set()).update(v)
    return out


def is_namespaced(key: str) -> bool:
    return bool(SCENARIOS[key].get("watchNamespaces"))


def webhook_on(key: str) -> bool:
    return SCENARIOS[key].get("webhook", {}).get("enabled", True)


def peering_on(key: str) -> bool:
    values = SCENARIOS[key]
    return values.get("replicas", 1) > 1 or values.get("peering", {}).get("enabled", False)


# --------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_lint_has_no_errors(key):
    report = helm.lint(str(CHART), copy.deepcopy(SCENARIOS[key]), namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 3] == []
    warnings = [m["error"] for m in report["messages"] if m["severity"] == 2]
    # The only warning: the optional kuberay-operator subchart is declared but not vendored.
    assert all("missing these dependencies: kuberay-operator" in w for w in warnings), warnings


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_every_rendered_object_is_valid(key):
    objs = objects(key)
    assert objs
    problems = []
    for obj in objs:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        assert obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name"), obj
        if (obj["apiVersion"], obj["kind"]) in EXTERNAL_KINDS:
            continue  # structural checks in the dedicated tests below
        if obj["kind"] == "CustomResourceDefinition" and obj["metadata"]["name"] == "rlhfjobs.rlhf.dev":
            continue  # test_chart_crd_is_a_valid_apiextensions_object
        problems += [f"{where}: {e}" for e in core_errors(obj)]
    assert problems == []


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_namespaced_objects_live_in_the_release_or_watched_namespaces(key):
    allowed = {NAMESPACE, *SCENARIOS[key].get("watchNamespaces", [])}
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                      "ValidatingWebhookConfiguration", "ClusterKopfPeering"}
    for obj in objects(key):
        ns = obj["metadata"].get("namespace")
        if obj["kind"] in cluster_scoped:
            assert ns is None, obj["kind"]
        else:
            assert ns in allowed, (obj["kind"], ns)
        if obj["kind"] in ("Role", "RoleBinding", "KopfPeering"):
            assert ns in SCENARIOS[key].get("watchNamespaces", []), (obj["kind"], ns)


def test_rendering_is_fast_enough_for_ci():
    import time

    start = time.perf_counter()
    render_values({"replicas": 2, **NAMESPACED})
    assert time.perf_counter() - start < 5


# --------------------------------------------------------------------------- RBAC


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_rbac_has_no_wildcards_and_no_secrets(key):
    rules = [(o["kind"], r) for o in objects(key) if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]
    for kind, rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert "*" not in (rule.get(field) or []), (kind, rule)
            assert not any("*" in v for v in rule.get(field) or []), (kind, rule)
        assert "nonResourceURLs" not in rule, rule
        # pods: the code-check pod only, which the operator renders itself (restricted, no token, no
        # Secrets); never exec, attach or logs into pods.
        assert not {"secrets", "pods/exec", "pods/attach", "pods/log", "serviceaccounts/token"} & \
            set(rule.get("resources") or []), rule
        if "pods" in (rule.get("resources") or []):
            assert rule["resources"] == ["pods"] and set(rule["verbs"]) == {"get", "create", "delete"}, rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


@pytest.mark.parametrize("key", sorted(k for k in SCENARIOS if not SCENARIOS[k].get("rbac", {}).get("create") is False))
def test_rbac_grants_exactly_what_the_operator_needs(key):
    objs = objects(key)
    roles = of_kind(objs, "Role")
    cluster_roles = of_kind(objs, "ClusterRole")
    cluster_grants = merge(*(grants(r["rules"]) for r in cluster_roles))
    if is_namespaced(key):
        # Namespaced mode: workloads only through Roles; the ClusterRoles are read-only CRD discovery
        # and, with the webhook, SubjectAccessReviews (cluster-scoped: no Role can grant them).
        assert cluster_grants == merge(CRD_DISCOVERY, SECRET_REVIEW if webhook_on(key) else {})
        expected_ns = set(SCENARIOS[key]["watchNamespaces"])
        assert {r["metadata"]["namespace"] for r in roles} == expected_ns
        for role in roles:
            expected = merge(WORKLOAD_RULES, NAMESPACED_PEERING if peering_on(key) else {})
            assert grants(role["rules"]) == expected, role["metadata"]
    else:
        assert roles == []
        expected = merge(WORKLOAD_RULES, CRD_DISCOVERY, NAMESPACE_SCAN, CLUSTER_PEERING if peering_on(key) else {},
                         SECRET_REVIEW if webhook_on(key) else {})
        assert cluster_grants == expected


@pytest.mark.parametrize("key", ["defaults", "namespaced", "peering-namespaced", "everything"])
def test_bindings_bind_the_operator_service_account_to_the_chart_roles(key):
    objs = objects(key)
    sa = container(key) and deployment(key)["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs
             if o["kind"] in ("Role", "ClusterRole")}
    bindings = [o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert len(bindings) == len(roles)
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], ns, ref["name"]) in roles
    if SCENARIOS[key].get("serviceAccount", {}).get("create", True):
        assert one(objs, "ServiceAccount")["metadata"]["name"] == sa


def test_rbac_off_renders_no_rbac_and_uses_the_given_service_account():
    objs = objects("no-rbac-external-sa")
    assert not [o for o in objs if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount")]
    assert deployment("no-rbac-external-sa")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-ops"


def test_cluster_scoped_names_include_the_release_namespace():
    a = {o["metadata"]["name"] for o in objects("defaults") if o["kind"] in ("ClusterRole", "ValidatingWebhookConfiguration")}
    other = chart().render({}, name=RELEASE, namespace="other-ns")
    b = {o["metadata"]["name"] for o in objects_of(other) if o["kind"] in ("ClusterRole", "ValidatingWebhookConfiguration")}
    assert a and b and not a & b


# --------------------------------------------------------------------------- Pod Security


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_operator_pod_is_restricted(key):
    for obj in objects(key):
        for where, pod in pod_specs(obj):
            assert restricted_violations(pod) == [], (obj["kind"], where)
    pod = deployment(key)["spec"]["template"]["spec"]
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is True
    assert not any(pod.get(h) for h in ("hostNetwork", "hostPID", "hostIPC"))
    assert all(set(v) - {"name"} <= {"emptyDir", "secret"} for v in pod["volumes"])
    assert any(m["mountPath"] == "/tmp" for m in pod["containers"][0]["volumeMounts"])


def test_default_pod_runs_as_the_image_user():
    pod = deployment("defaults")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["runAsGroup"] == 10001
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile


def test_openshift_style_leaves_ids_to_the_platform():
    psc = deployment("openshift-style")["spec"]["template"]["spec"]["securityContext"]
    assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(psc)
    assert psc["runAsNonRoot"] is True


@pytest.mark.parametrize("bad", [
    {"securityContext": {"privileged": True}},
    {"securityContext": {"allowPrivilegeEscalation": True}},
    {"securityContext": {"readOnlyRootFilesystem": False}},
    {"securityContext": {"runAsNonRoot": False}},
    {"securityContext": {"runAsUser": 0}},
    {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
    {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
    {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
    {"securityContext": {"procMount": "Unmasked"}},
    {"podSecurityContext": {"runAsUser": 0}},
    {"podSecurityContext": {"runAsNonRoot": False}},
    {"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}},
    {"podSecurityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}},
    {"podSecurityContext": {"seLinuxOptions": {"type": "spc_t"}}},
    {"podSecurityContext": {"appArmorProfile": {"type": "Unconfined"}}},
], ids=lambda v: repr(v)[:60])
def test_values_that_would_weaken_pod_security_are_rejected(bad):
    with pytest.raises(helm.HelmValuesError):
        render_values(bad)


def test_hardening_survives_empty_security_values():
    """Even with the security sections emptied, the rendered pod stays restricted."""
    objs = objects_of(render_values({"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None,
                                                            "runAsNonRoot": None, "seccompProfile": None},
                                     "securityContext": {"allowPrivilegeEscalation": None, "privileged": None,
                                                         "readOnlyRootFilesystem": None, "runAsNonRoot": None,
                                                         "capabilities": None, "seccompProfile": None}}))
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("bad", [
    {"logLevel": "verbose"},
    {"logLevel": "info"},
    {"replicas": 0},
    {"replicas": "2"},
    {"replicas": 1.5},
    {"unknownKey": True},
    {"image": {"pullPolicy": "Sometimes"}},
    {"image": {"tag": ["1"]}},
    {"image": {"digest": "latest"}},
    {"image": {"registry": "x"}},
    {"watchNamespaces": "team-a"},
    {"watchNamespaces": ["Team_A"]},
    {"watchNamespaces": ["a", "a"]},
    {"workerImage": 3},
    {"progress": {"intervalSeconds": "15s"}},
    {"progress": {"intervalSeconds": 0}},
    {"progress": {"stallSeconds": -1}},
    {"progress": {"pollSeconds": 3}},
    {"health": {"port": 80}},
    {"health": {"port": 70000}},
    {"webhook": {"failurePolicy": "Maybe"}},
    {"webhook": {"enabled": "yes"}},
    {"webhook": {"timeoutSeconds": 31}},
    {"webhook": {"certManager": {"issuerRef": {"kind": "Issuer"}}}},
    {"webhook": {"certManager": {"duration": "1 year"}}},
    {"webhook": {"tls": {}}},
    {"metrics": {"serviceMonitor": {"enabled": "true"}}},
    {"metrics": {"serviceMonitor": {"interval": "often"}}},
    {"serviceAccount": {"create": "yes"}},
    {"rbac": {"create": 1}},
    {"rbac": {"clusterWide": True}},
    {"crds": {"install": "no"}},
    {"resources": {"requests": {"cpu": ["1"]}}},
    {"resources": {"request": {"cpu": "1"}}},
    {"nodeSelector": {"disk": 1}},
    {"tolerations": {"key": "x"}},
    {"imagePullSecrets": [{"secret": "x"}]},
    {"extraEnv": [{"value": "no-name"}]},
    {"peering": {"name": "Bad Name"}},
    {"networkPolicy": {"apiServerPorts": []}},
    {"kuberay-operator": {"enabled": "false"}},
], ids=lambda v: repr(v)[:60])
def test_schema_rejects_bad_values(bad):
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema(bad)
    with pytest.raises(helm.HelmValuesError):
        render_values(bad)


@pytest.mark.parametrize("bad", [{"logLevel": "verbose"}, {"replicas": 0}, {"unknownKey": True}, {"replicas": "2"}],
                         ids=repr)
def test_lint_reports_bad_values(bad):
    report = helm.lint(str(CHART), bad)
    assert report["errors"], bad


def test_schema_accepts_every_scenario_and_the_defaults():
    for key, values in SCENARIOS.items():
        chart().validate_schema(copy.deepcopy(values))
    schema = chart().schema
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
    for section in ("image", "peering", "progress", "health", "webhook", "metrics", "serviceAccount", "rbac", "crds",
                    "podSecurityContext", "securityContext", "networkPolicy", "podDisruptionBudget"):
        assert schema["properties"][section]["additionalProperties"] is False, section


def test_every_value_is_documented():
    """Each key of values.yaml has a comment right above it (free-form defaults excepted)."""
    free_form = ("resources", "podSecurityContext", "securityContext")
    undocumented, section = [], ""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        key = stripped.split(":")[0]
        if not line.startswith(" "):
            section = key
        elif section in free_form:
            continue
        if not lines[i - 1].strip().startswith("#"):
            undocumented.append(f"line {i + 1}: {key}")
    assert undocumented == []


@pytest.mark.parametrize("values, message", [
    ({"progress": {"intervalSeconds": 600, "stallSeconds": 300}}, "stallSeconds"),
    ({"webhook": {"port": 8080}}, "must differ"),
    ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "metrics.enabled"),
    pytest.param({"kuberay-operator": {"enabled": True}}, "helm dependency build",
                 marks=pytest.mark.skipif(KUBERAY_FETCHED, reason="the kuberay-operator subchart was fetched")),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name"),
])
def test_inconsistent_values_fail_with_a_message(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render_values(values)


# --------------------------------------------------------------------------- CRD


def crd_from_chart(key: str) -> dict[str, Any] | None:
    found = [o for o in objects(key) if o["kind"] == "CustomResourceDefinition" and o["metadata"]["name"] == "rlhfjobs.rlhf.dev"]
    return found[0] if found else None


def test_chart_crd_is_the_generated_file():
    """No second copy: the chart reads crds/rlhf.dev_rlhfjobs.yaml through a symlink."""
    link = CHART / "files" / "rlhf.dev_rlhfjobs.yaml"
    assert link.is_symlink() and link.resolve() == CRD_FILE.resolve()
    generated = yaml.safe_load(CRD_FILE.read_text())
    kept = copy.deepcopy(crd_from_chart("defaults"))
    annotations = kept["metadata"].pop("annotations")
    assert annotations == {"helm.sh/resource-policy": "keep"}
    assert kept == generated
    assert crd_from_chart("crds-not-kept") == generated
    assert crd_from_chart("crds-not-installed") is None


def test_chart_crd_is_a_valid_apiextensions_object():
    assert core_errors(crd_from_chart("defaults")) == []


def test_packaged_chart_contains_the_real_files(tmp_path):
    """Helm's loader follows the symlinks: an archive of the chart holds the CRD and the Lua, not links.

    (`helm package` itself first needs `helm dependency build`, which fetches the kuberay-operator
    archive; Chart.save writes the same archive from the loaded chart.)
    """
    archive = chart().save(str(tmp_path))
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name, source in (("rlhf-operator/files/rlhf.dev_rlhfjobs.yaml", CRD_FILE),
                             ("rlhf-operator/files/argocd-health.lua", ROOT / "docs" / "argocd-health.lua")):
            assert members[name].isfile(), name
            assert tar.extractfile(members[name]).read() == source.read_bytes()
    packaged = helm.Chart.load(archive)
    assert objects_of(packaged.render({}, name=RELEASE, namespace=NAMESPACE))


# --------------------------------------------------------------------------- operator environment


def test_operator_environment_defaults():
    e = env("defaults")
    assert e["RLHF_NAMESPACES"] == ""
    assert e["RLHF_WORKER_IMAGE"] == "ghcr.io/rlhf-dev/rlhf-workers:0.1.0"
    assert e["RLHF_PROGRESS_INTERVAL_SECONDS"] == "15"
    assert e["RLHF_STALL_SECONDS"] == "600"
    assert e["RLHF_LOG_LEVEL"] == "INFO"
    assert e["RLHF_HEALTH_PORT"] == "8080"
    assert e["RLHF_WEBHOOK_PORT"] == "9443"
    assert e["RLHF_WEBHOOK_CERT_DIR"] == "/etc/rlhf/webhook-certs"
    assert "RLHF_PEERING" not in e
    assert e["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container("defaults")["image"] == "ghcr.io/rlhf-dev/rlhf-operator:0.1.0"
    assert "command" not in container("defaults") and "args" not in container("defaults")


def test_operator_environment_follows_values():
    e = env("everything")
    assert e["RLHF_NAMESPACES"] == "team-a,team-b"
    assert e["RLHF_WORKER_IMAGE"] == "registry.example.com/rlhf/workers:1.2.3"
    assert float(e["RLHF_PROGRESS_INTERVAL_SECONDS"]) == 5
    assert float(e["RLHF_STALL_SECONDS"]) == 120.5
    assert e["RLHF_LOG_LEVEL"] == "DEBUG"
    assert e["RLHF_HEALTH_PORT"] == "8081"
    assert e["RLHF_PEERING"] == "rlhf"
    assert e["RLHF_PROGRESS_TIMEOUT"] == "3"
    c = container("everything")
    assert c["image"] == "registry.example.com/rlhf/operator@sha256:" + "a" * 64
    assert c["imagePullPolicy"] == "Always"
    pod = deployment("everything")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other-regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"] and pod["topologySpreadConstraints"]
    assert c["resources"]["limits"]["memory"] == "1Gi"
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    meta = deployment("everything")["spec"]["template"]["metadata"]
    assert meta["annotations"]["example.com/team"] == "ml-platform"
    assert meta["labels"]["example.com/cost-center"] == "ml"


def test_operator_config_parses_the_rendered_environment():
    """The env the chart renders is what OperatorConfig.from_env understands."""
    from rlhf_operator.config import OperatorConfig

    for key in ("defaults", "everything", "webhook-off"):
        e = {k: v for k, v in env(key).items() if isinstance(v, str)}
        cfg = OperatorConfig.from_env(e)
        assert cfg.namespaces == SCENARIOS[key].get("watchNamespaces", [])
        assert cfg.worker_image == e["RLHF_WORKER_IMAGE"]
        assert cfg.progress_interval == float(e["RLHF_PROGRESS_INTERVAL_SECONDS"])
        assert cfg.stall_seconds == float(e["RLHF_STALL_SECONDS"])
        assert cfg.health_port == int(e["RLHF_HEALTH_PORT"])
        assert (cfg.webhook_cert_dir is not None) == (key != "webhook-off")
        assert (cfg.peering is not None) == peering_on(key)
        assert cfg.allow_secret_references is False


def test_secret_references_are_refused_without_the_webhook_unless_allowed():
    from rlhf_operator.config import OperatorConfig

    assert env("webhook-off")["RLHF_ALLOW_SECRET_REFERENCES"] == "false"
    values = {"webhook": {"enabled": False}, "secrets": {"allowReferences": True}}
    objs = objects_of(chart().render(values, name=RELEASE, namespace=NAMESPACE))
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    e = {v["name"]: v.get("value") for v in pod["containers"][0]["env"]}
    assert OperatorConfig.from_env({"RLHF_ALLOW_SECRET_REFERENCES": e["RLHF_ALLOW_SECRET_REFERENCES"]}) \
        .allow_secret_references is True
    # Without the webhook nothing reviews access, so no SubjectAccessReview grant either.
    rules = [r for o in objs if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]
    assert not any("subjectaccessreviews" in r.get("resources", []) for r in rules)


def test_probes_and_ports():
    c = container("everything")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8081, "webhook": 9443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"] for p in container("webhook-off")["ports"]} == {"health"}


# --------------------------------------------------------------------------- replicas, peering, PDB


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_peering_and_rollout_strategy(key):
    objs = objects(key)
    dep = one(objs, "Deployment")
    replicas = SCENARIOS[key].get("replicas", 1)
    assert dep["spec"]["replicas"] == replicas
    e = env(key)
    peerings = of_kind(objs, "KopfPeering") + of_kind(objs, "ClusterKopfPeering")
    kopf_crds = {o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition"
                 and o["spec"]["group"] == "kopf.dev"}
    if peering_on(key):
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
        # One shared priority would freeze every replica: the operator picks its own per process.
        assert "RLHF_PEERING_PRIORITY" not in e
        name = e["RLHF_PEERING"]
        assert {p["metadata"]["name"] for p in peerings} == {name}
        if is_namespaced(key):
            assert {p["metadata"]["namespace"] for p in peerings} == set(SCENARIOS[key]["watchNamespaces"])
            assert all(p["kind"] == "KopfPeering" for p in peerings)
        else:
            assert [p["kind"] for p in peerings] == ["ClusterKopfPeering"]
        for p in peerings:
            # Created after the CRDs exist (Helm cannot map a kind whose CRD is in the same release).
            assert p["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
        if SCENARIOS[key].get("peering", {}).get("installCRDs", True):
            assert kopf_crds == {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
        else:
            assert kopf_crds == set()
    else:
        # A standalone operator must never overlap with its successor.
        assert dep["spec"]["strategy"] == {"type": "Recreate"}
        assert "RLHF_PEERING" not in e and peerings == [] and kopf_crds == set()


@pytest.mark.parametrize("key", ["defaults", "peering-cluster-wide", "peering-namespaced"])
def test_pod_disruption_budget(key):
    objs = objects(key)
    pdb = one(objs, "PodDisruptionBudget")
    if SCENARIOS[key].get("replicas", 1) > 1:
        assert pdb["spec"] == {"minAvailable": 1, "selector": pdb["spec"]["selector"]}
    else:
        assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# --------------------------------------------------------------------------- services, webhook, metrics


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_services_select_the_operator_pod_and_named_ports(key):
    objs = objects(key)
    pod = one(objs, "Deployment")["spec"]["template"]
    port_names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    for svc in of_kind(objs, "Service"):
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names


def _webhook(key: str) -> dict[str, Any]:
    return one(objects(key), "ValidatingWebhookConfiguration")


@pytest.mark.parametrize("key", sorted(k for k in SCENARIOS if k != "webhook-off"))
def test_validating_webhook(key):
    objs = objects(key)
    config = one(objs, "ValidatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["failurePolicy"] == SCENARIOS[key].get("webhook", {}).get("failurePolicy", "Fail")
    assert hook["rules"] == [{"apiGroups": ["rlhf.dev"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"],
                              "resources": ["rlhfjobs"], "scope": "Namespaced"}]
    service = hook["clientConfig"]["service"]
    assert service["path"] == "/validate-rlhfjob" and service["namespace"] == NAMESPACE
    svc = next(s for s in of_kind(objs, "Service") if s["metadata"]["name"] == service["name"])
    assert svc["spec"]["ports"] == [{"name": "https", "port": service["port"], "targetPort": "webhook", "protocol": "TCP"}]
    port = next(p for p in container(key)["ports"] if p["name"] == "webhook")
    assert port["containerPort"] == SCENARIOS[key].get("webhook", {}).get("port", 9443)
    if is_namespaced(key):
        assert hook["namespaceSelector"] == {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": SCENARIOS[key]["watchNamespaces"]}]}
    else:
        assert "namespaceSelector" not in hook
    # The pod mounts the Secret that holds the serving certificate.
    volumes = {v["name"]: v for v in deployment(key)["spec"]["template"]["spec"]["volumes"]}
    secret_name = volumes["webhook-certs"]["secret"]["secretName"]
    if SCENARIOS[key].get("webhook", {}).get("certManager", {}).get("enabled"):
        cert = one(objs, "Certificate")
        assert cert["spec"]["secretName"] == secret_name
        assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{cert['metadata']['name']}"
        assert "caBundle" not in hook["clientConfig"]
        host = f"{service['name']}.{NAMESPACE}.svc"
        assert host in cert["spec"]["dnsNames"]
        issuer_ref = SCENARIOS[key]["webhook"]["certManager"].get("issuerRef")
        if issuer_ref:
            assert of_kind(objs, "Issuer") == []
            assert cert["spec"]["issuerRef"] == {"name": issuer_ref["name"], "kind": issuer_ref["kind"], "group": "cert-manager.io"}
        else:
            issuer = one(objs, "Issuer")
            assert issuer["apiVersion"] == "cert-manager.io/v1" and issuer["spec"] == {"selfSigned": {}}
            assert cert["spec"]["issuerRef"] == {"name": issuer["metadata"]["name"], "kind": "Issuer", "group": "cert-manager.io"}
        assert of_kind(objs, "Secret") == []
    else:
        secret = one(objs, "Secret")
        assert secret["metadata"]["name"] == secret_name and secret["type"] == "kubernetes.io/tls"
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        assert "checksum/webhook-cert" in deployment(key)["spec"]["template"]["metadata"]["annotations"]


def test_self_signed_certificate_is_valid_for_the_webhook_service():
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import padding

    objs = objects("defaults")
    secret = one(objs, "Secret")
    hook = one(objs, "ValidatingWebhookConfiguration")["webhooks"][0]
    ca = x509.load_pem_x509_certificate(base64.b64decode(hook["clientConfig"]["caBundle"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    svc = hook["clientConfig"]["service"]
    assert f"{svc['name']}.{svc['namespace']}.svc" in names
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=3000)
    assert base64.b64decode(secret["data"]["tls.key"]).startswith(b"-----BEGIN")


def test_webhook_off_removes_everything_webhook():
    objs = objects("webhook-off")
    assert not [o for o in objs if o["kind"] in ("ValidatingWebhookConfiguration", "Secret", "Certificate", "Issuer")]
    assert not [s for s in of_kind(objs, "Service") if "webhook" in s["metadata"]["name"]]
    assert "RLHF_WEBHOOK_CERT_DIR" not in env("webhook-off")
    assert {v["name"] for v in deployment("webhook-off")["spec"]["template"]["spec"]["volumes"]} == {"tmp"}


@pytest.mark.parametrize("key", ["metrics-servicemonitor", "everything"])
def test_metrics_service_and_service_monitor(key):
    objs = objects(key)
    svc = next(s for s in of_kind(objs, "Service") if s["metadata"]["name"].endswith("-metrics"))
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "health"
    sm = one(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    if key == "metrics-servicemonitor":
        assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "10s"
        assert sm["metadata"]["labels"]["release"] == "prom"


def test_metrics_service_off_and_no_service_monitor_by_default():
    assert of_kind(objects("defaults"), "ServiceMonitor") == []
    assert not [s for s in of_kind(objects("metrics-off"), "Service") if s["metadata"]["name"].endswith("-metrics")]


@pytest.mark.parametrize("key", ["everything", "network-policy-cluster-wide"])
def test_network_policy_allows_progress_polling_and_the_api(key):
    policy = one(objects(key), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress = policy["spec"]["egress"]
    progress = [r for r in egress if any(p["port"] == 8270 for p in r["ports"])]
    assert progress and progress[0]["to"][0]["podSelector"] == {"matchLabels": {"ray.io/node-type": "head"}}
    if is_namespaced(key):
        assert progress[0]["to"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["team-a", "team-b"]
    assert any({p["port"] for p in r["ports"]} == {443, 6443} for r in egress)
    assert any(p["port"] == 53 for r in egress for p in r["ports"])
    assert of_kind(objects("defaults"), "NetworkPolicy") == []


# --------------------------------------------------------------------------- kuberay dependency, NOTES


def test_kuberay_dependency_is_declared_optional_and_off():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (dep,) = meta["dependencies"]
    assert dep == {"name": "kuberay-operator", "version": "1.7.0",
                   "repository": "https://ray-project.github.io/kuberay-helm/", "condition": "kuberay-operator.enabled"}
    assert chart().values["kuberay-operator"]["enabled"] is False
    listed = helm.dependency_list(str(CHART))
    assert [(d["name"], d["status"]) for d in listed] == [("kuberay-operator", "ok" if KUBERAY_FETCHED else "missing")]
    assert "/charts/" in (CHART / ".gitignore").read_text().split(), "fetched subchart archives stay out of git"
    # Rendering without the archive works while the dependency is off (every scenario does).
    assert objects("kuberay-off")


@pytest.mark.parametrize("key", ["defaults", "namespaced", "peering-cluster-wide"])
def test_notes_tell_how_to_apply_and_watch_a_first_job(key):
    text = notes(key)
    assert "kubectl" in text and "apply -f examples/" in text
    assert "get rlhf -w" in text and "describe rlhf " in text
    assert "apply -k examples/gitops/" in text
    for line in text.splitlines():
        if "apply -f examples/" in line:
            assert (ROOT / line.split("apply -f ")[1].strip()).is_file()
    if is_namespaced(key):
        assert "-n team-a apply" in text


def test_chart_does_not_hand_copy_anything_it_can_link():
    files = {p.name for p in (CHART / "files").iterdir()}
    assert files == {"rlhf.dev_rlhfjobs.yaml", "argocd-health.lua"}
    assert all((CHART / "files" / f).is_symlink() for f in files)
    assert not (CHART / "crds").exists(), "the CRD is templated (upgradable); crds/ would install a second copy"


@pytest.mark.parametrize("values, kuberay", [({}, None), ({"networkPolicy": {"kuberayNamespace": "ray-system"}}, "ray-system")])
def test_operator_is_told_its_namespace_and_kuberays_for_job_network_policies(values, kuberay):
    from rlhf_operator.config import OperatorConfig

    deployment, = of_kind(objects_of(render_values(values)), "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RLHF_OPERATOR_NAMESPACE"] == NAMESPACE
    assert env.get("RLHF_KUBERAY_NAMESPACE") == kuberay
    cfg = OperatorConfig.from_env({k: v for k, v in env.items() if k.startswith("RLHF_") and v is not None})
    assert (cfg.operator_namespace, cfg.kuberay_namespace) == (NAMESPACE, kuberay)


def test_the_rbac_table_of_docs_operations_is_what_the_chart_grants():
    """docs/operations.md lists the operator's permissions; with the webhook and peering off it is
    exactly the chart's roles (kopf's peering objects are the chart's own business)."""
    text = (ROOT / "docs" / "operations.md").read_text().split("## RBAC", 1)[1].split("\n## ", 1)[0]
    documented: dict[tuple[str, str], set[str]] = {}
    for groups, resource, verbs in re.findall(r"^\| ([^|]+) \| `([^`]+)` \| ([^|]+) \|", text, re.M):
        for group in groups.split(","):
            group = group.strip().strip("`")
            documented[("" if group == "core" else group, resource)] = {v.strip() for v in verbs.split(",")}
    rules = [r for o in objects("everything") if o["kind"] in ("ClusterRole", "Role") for r in o["rules"]]
    granted = {k: v for k, v in grants(rules).items() if not k[1].endswith("kopfpeerings")}
    assert documented == granted
