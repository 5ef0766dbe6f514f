"""Secrets reached through env (cluster.env[].valueFrom.secretKeyRef, cluster.envFrom[].secretRef) pass the
same admission check as every other Secret a job names: a SubjectAccessReview per Secret for the
requesting user, on the real webhook against the emulator (see test_secrets.py for the set-up)."""

from support.operator_env import NS, RAYJOBS, rlhfjob, wait_phase
from test_secrets import Authorizer, spec_with, webhook  # noqa: F401 - webhook is a fixture

ENV_SPEC = spec_with(cluster={
    "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}],
    "envFrom": [{"secretRef": {"name": "s3-creds"}, "prefix": "AWS_"}, {"configMapRef": {"name": "extra-env"}}],
})


def test_a_user_who_may_not_read_an_env_secret_is_refused_naming_it(kube, webhook):  # noqa: F811
    authz = Authorizer(kube, {(NS, "hf-token"): {"alice", "bob"}, (NS, "s3-creds"): {"alice"}})
    response = webhook(rlhfjob(spec=ENV_SPEC), user="bob")
    assert response["allowed"] is False and response["status"]["code"] == 403
    message = response["status"]["message"]
    assert '"s3-creds"' in message and "spec.cluster.envFrom[0].secretRef.name" in message, message
    assert [r["spec"]["resourceAttributes"]["name"] for r in authz.reviews] == ["hf-token", "s3-creds"]


def test_a_user_who_may_not_read_a_secret_key_ref_is_refused_naming_it(kube, webhook):  # noqa: F811
    Authorizer(kube, {(NS, "s3-creds"): {"carol"}})
    response = webhook(rlhfjob(spec=ENV_SPEC), user="carol")
    assert response["allowed"] is False
    assert '"hf-token"' in response["status"]["message"]
    assert "spec.cluster.env[0].valueFrom.secretKeyRef.name" in response["status"]["message"]


def test_a_user_who_may_read_both_is_admitted_and_no_configmap_is_reviewed(kube, webhook):  # noqa: F811
    authz = Authorizer(kube, {(NS, "hf-token"): {"alice"}, (NS, "s3-creds"): {"alice"}})
    assert webhook(rlhfjob(spec=ENV_SPEC), user="alice")["allowed"] is True
    assert {r["spec"]["resourceAttributes"]["name"] for r in authz.reviews} == {"hf-token", "s3-creds"}


def test_without_the_webhook_env_secrets_are_refused_at_launch_naming_them(kube, operator):
    operator.start()
    kube.create(rlhfjob(spec=ENV_SPEC))
    status = wait_phase(kube, "Failed", "SecretsNotAllowed")
    assert 'Secret "hf-token"' in status["message"] and 'Secret "s3-creds"' in status["message"], status["message"]
    assert kube.list(RAYJOBS, NS) == []


def test_with_the_settings_allowing_them_the_rayjob_carries_the_env_sources(kube, operator):
    operator.start(allow_secret_references=True)
    kube.create(rlhfjob(spec=ENV_SPEC))
    rayjob = kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    container = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in container["env"]
    assert container["envFrom"] == ENV_SPEC["cluster"]["envFrom"]
