"""Credentials and identity for the Ray pods: env from Secret and ConfigMap keys (valueFrom), whole
Secrets/ConfigMaps as env (envFrom), and the service account the pods run as.

Each is validated as the core type it is (SecretKeySelector, ConfigMapKeySelector, EnvFromSource,
a DNS-subdomain object name), by the model in the API server's words and by the generated CRD;
every Secret it names is listed for admission; the rendered pods pass the core and KubeRay schemas.
"""

import pytest

from k8s_schemas import core_errors, pod_from_template, rayjob_errors
from rlhf_api.podsecurity import pod_specs, restricted_violations
from rlhf_api.secrets import SecretReference, secret_references
from rlhf_api.validation import InvalidJob, parse_job
from rlhf_operator.render import render
from support.jobs import job
from test_crd_model_agree import crd_verdict

HF_TOKEN = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
MODE = {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode", "optional": True}}}
S3 = {"prefix": "AWS_", "secretRef": {"name": "s3-creds"}}
EXTRA = {"configMapRef": {"name": "extra-env"}}


def identity_job(**cluster):
    return job(cluster={"env": [HF_TOKEN, MODE, {"name": "PLAIN", "value": "1"}], "envFrom": [S3, EXTRA], **cluster})


def rendered_rayjob(doc):
    parsed = parse_job(doc)
    parsed.metadata.uid = "7f3c2a4e-1111-2222-3333-444455556666"
    return render(parsed, {})[-1]


def ray_pods(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def errors_of(doc):
    with pytest.raises(InvalidJob) as exc:
        parse_job(doc)
    return [str(e) for e in exc.value.errors]


def test_env_from_secret_and_configmap_keys_reaches_every_ray_container_as_written():
    rayjob = rendered_rayjob(identity_job(trainer={"replicas": 1}))
    pods = dict(ray_pods(rayjob))
    assert set(pods) == {"head", "rollout", "trainer"}
    for where, pod in pods.items():
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_TOKEN"] == HF_TOKEN, where
        assert env["MODE"] == MODE, where
        assert env["PLAIN"] == {"name": "PLAIN", "value": "1"}, where
        assert container["envFrom"] == [S3, EXTRA], where


def test_rendered_pods_with_env_sources_and_a_service_account_pass_core_and_kuberay_schemas():
    rayjob = rendered_rayjob(identity_job(serviceAccountName="trainer-identity", automountServiceAccountToken=True,
                                          trainer={"replicas": 1}))
    assert rayjob_errors(rayjob) == []
    for where, pod in pod_specs(rayjob):
        assert core_errors(pod_from_template({"metadata": {"labels": {}}, "spec": pod}, where.lower())) == [], where
        assert restricted_violations(pod) == [], where


def test_pods_run_as_the_named_service_account_with_no_token_unless_asked():
    rayjob = rendered_rayjob(job(cluster={"serviceAccountName": "trainer-identity", "trainer": {"replicas": 1}}))
    for where, pod in ray_pods(rayjob):
        assert pod["serviceAccountName"] == "trainer-identity", where
        assert pod["automountServiceAccountToken"] is False, where
    asked = rendered_rayjob(job(cluster={"serviceAccountName": "trainer-identity", "automountServiceAccountToken": True}))
    assert all(pod["automountServiceAccountToken"] is True for _, pod in ray_pods(asked))
    # The submitter only runs `ray job submit`: never the job's identity, never a token.
    submitter = asked["spec"]["submitterPodTemplate"]["spec"]
    assert "serviceAccountName" not in submitter and submitter["automountServiceAccountToken"] is False


def test_without_a_service_account_the_pods_name_none():
    for _, pod in ray_pods(rendered_rayjob(job())):
        assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False


def test_every_secret_named_by_env_is_listed_for_admission_with_its_field():
    refs = secret_references(parse_job(identity_job()).spec)
    assert refs == [SecretReference("spec.cluster.env[0].valueFrom.secretKeyRef.name", "hf-token"),
                    SecretReference("spec.cluster.envFrom[0].secretRef.name", "s3-creds")]


REFUSED = [
    ({"env": [{"name": "X", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
     "spec.cluster.env[0].valueFrom: may not be specified when `value` is not empty"),
    ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"},
                                          "configMapKeyRef": {"name": "c", "key": "k"}}}]},
     "spec.cluster.env[0].valueFrom: must specify exactly one of: `secretKeyRef` or `configMapKeyRef`"),
    ({"env": [{"name": "X", "valueFrom": {}}]},
     "spec.cluster.env[0].valueFrom: must specify exactly one of: `secretKeyRef` or `configMapKeyRef` (got none)"),
    ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "Bad_Name", "key": "k"}}}]},
     "spec.cluster.env[0].valueFrom.secretKeyRef.name: Invalid value: 'Bad_Name': a lowercase RFC 1123 subdomain"),
    ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a/b"}}}]},
     "spec.cluster.env[0].valueFrom.secretKeyRef.key: Invalid value: 'a/b': a valid config key must consist of"),
    ({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": ".."}}}]},
     "spec.cluster.env[0].valueFrom.configMapKeyRef.key: Invalid value: '..': must not be '..'"),
    ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}]},
     "spec.cluster.env[0].valueFrom.secretKeyRef.key: required field is missing"),
    ({"envFrom": [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]},
     "spec.cluster.envFrom[0]: must specify exactly one of: `secretRef` or `configMapRef`"),
    ({"envFrom": [{"prefix": "AWS_"}]}, "spec.cluster.envFrom[0]: must specify exactly one of"),
    ({"envFrom": [{"secretRef": {"name": "s"}, "prefix": "9X"}]}, "spec.cluster.envFrom[0].prefix"),
    ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "spec.cluster.env[1].name: A is given twice"),
    ({"serviceAccountName": "Trainer"}, "spec.cluster.serviceAccountName: Invalid value: 'Trainer': a lowercase RFC 1123"),
]


@pytest.mark.parametrize("cluster, message", REFUSED, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(REFUSED)])
def test_bad_env_and_identity_are_refused_naming_the_field(cluster, message):
    errors = errors_of(job(cluster=cluster))
    assert any(e.startswith(message) for e in errors), errors


def test_unsupported_env_sources_are_refused_by_name_not_as_a_misspelling():
    errors = errors_of(job(cluster={"env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}))
    assert errors == ["spec.cluster.env[0].valueFrom.fieldRef: not supported in an RLHFJob; use secretKeyRef or configMapKeyRef"]


@pytest.mark.parametrize("cluster", [
    {"env": [{"name": "X", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
    {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}, "configMapKeyRef": {"name": "c", "key": "k"}}}]},
    {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "Bad_Name", "key": "k"}}}]},
    {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a/b"}}}]},
    {"envFrom": [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]},
    {"envFrom": [{"prefix": "AWS_"}]},
    {"serviceAccountName": "Trainer"},
])
def test_the_crd_refuses_them_too(cluster):
    assert crd_verdict(job(cluster=cluster)["spec"]) != []


def test_the_crd_takes_what_the_model_takes():
    assert crd_verdict(identity_job(serviceAccountName="trainer-identity", automountServiceAccountToken=True)["spec"]) == []


def test_a_mounted_token_is_listed_as_a_credential_of_its_account():
    from rlhf_api.secrets import TokenReference, token_references

    assert token_references(parse_job(job(cluster={"serviceAccountName": "trainer-identity"})).spec) == []
    named = parse_job(job(cluster={"serviceAccountName": "trainer-identity", "automountServiceAccountToken": True}))
    assert token_references(named.spec) == [TokenReference("spec.cluster.automountServiceAccountToken", "trainer-identity")]
    unnamed = parse_job(job(cluster={"automountServiceAccountToken": True}))
    assert token_references(unnamed.spec)[0].service_account == "default"
