"""A job may name a Secret only if its creator may read it.

With the admission webhook (kopf's HTTPS server, real AdmissionReview requests) every Secret the
spec names is checked by a SubjectAccessReview for the requesting user: real HTTP from the
operator's `kubernetes` client to the emulator, where a KMock reaction plays the authorizer by a
rule each test sets (which users may `get` which Secret) and answers as the API server does
(status.allowed / denied / reason). Without the webhook nobody is there to ask, and launch
refuses such jobs unless the operator's settings allow them.
"""

import json
import shutil
import urllib.request
import uuid

import pytest

from support.operator_env import NS, RAYJOBS, conditions, rlhfjob, start_with_webhook, wait_phase
from support.operator_env import SPEC

SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
WANDB = {"project": "p", "apiKeySecretRef": {"name": "wandb", "key": "api-key"}}


def spec_with(**sections):
    return {**json.loads(json.dumps(SPEC)), **sections}


def secret_spec():
    """W&B key and a secret volume: two Secrets, "wandb" and "db-password"."""
    return spec_with(logging={"wandb": WANDB}, cluster={"volumes": [
        {"name": "db", "mountPath": "/db", "source": {"secret": {"secretName": "db-password"}}}]})


class Authorizer:
    """Who may `get` which Secret, answered as SubjectAccessReviews; records every review asked."""

    def __init__(self, kube, readers):
        self.readers, self.reviews = readers, []
        kube.kmock[f"post {SAR_PATH}"] << 201 << self.answer

    def answer(self, request):
        review = request.data
        self.reviews.append(review)
        spec = review["spec"]
        attrs = spec["resourceAttributes"]
        allowed = (attrs["verb"] == "get" and attrs["resource"] == "secrets" and attrs["group"] == ""
                   and spec.get("user") in self.readers.get((attrs["namespace"], attrs["name"]), ()))
        status = ({"allowed": True, "reason": f'RBAC: allowed by RoleBinding "read-{attrs["name"]}/{NS}"'}
                  if allowed else {"allowed": False})
        return {"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {},
                "spec": spec, "status": status}


@pytest.fixture
def webhook(kube, operator, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    port, context = start_with_webhook(kube, operator, tmp_path)

    def review(obj, user="alice", groups=("system:authenticated",), old=None):
        request = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": str(uuid.uuid4()), "operation": "UPDATE" if old else "CREATE",
            "kind": {"group": "rlhf.dev", "version": "v1alpha1", "kind": "RLHFJob"},
            "resource": {"group": "rlhf.dev", "version": "v1alpha1", "resource": "rlhfjobs"},
            "name": obj["metadata"]["name"], "namespace": NS, "object": obj, "oldObject": old, "dryRun": False,
            "userInfo": {"username": user, "uid": f"uid-{user}", "groups": list(groups)},
        }}
        http = urllib.request.Request(f"https://127.0.0.1:{port}/validate-rlhfjob", data=json.dumps(request).encode(),
                                      headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(http, context=context, timeout=10) as response:
            return json.load(response)["response"]
    return review


def test_a_user_who_may_read_every_secret_is_admitted_after_one_review_per_secret(kube, webhook):
    authz = Authorizer(kube, {(NS, "wandb"): {"alice"}, (NS, "db-password"): {"alice"}})
    assert webhook(rlhfjob(spec=secret_spec()), user="alice")["allowed"] is True
    assert [r["spec"]["resourceAttributes"] for r in authz.reviews] == [
        {"namespace": NS, "verb": "get", "group": "", "resource": "secrets", "name": "wandb"},
        {"namespace": NS, "verb": "get", "group": "", "resource": "secrets", "name": "db-password"},
    ]
    first = authz.reviews[0]
    assert first["kind"] == "SubjectAccessReview" and first["apiVersion"] == "authorization.k8s.io/v1"
    assert (first["spec"]["user"], first["spec"]["uid"], first["spec"]["groups"]) == \
        ("alice", "uid-alice", ["system:authenticated"])


def test_a_user_who_may_not_read_a_secret_is_refused_naming_it(kube, webhook):
    authz = Authorizer(kube, {(NS, "wandb"): {"alice", "bob"}, (NS, "db-password"): {"alice"}})
    response = webhook(rlhfjob(spec=secret_spec()), user="bob")
    assert response["allowed"] is False and response["status"]["code"] == 403
    message = response["status"]["message"]
    assert '"db-password"' in message and "spec.cluster.volumes[0].source.secret.secretName" in message
    assert "bob may not read" in message, message
    assert [r["spec"]["resourceAttributes"]["name"] for r in authz.reviews] == ["wandb", "db-password"]


def test_an_update_by_someone_else_reviews_no_secret_the_job_already_named(kube, webhook):
    """Suspending alice's job is not reading her Secrets (the fields that name them are immutable)."""
    authz = Authorizer(kube, {(NS, "wandb"): {"alice"}, (NS, "db-password"): {"alice"}})
    old = rlhfjob(spec=secret_spec())
    suspended = rlhfjob(spec={**secret_spec(), "suspend": True})
    assert webhook(suspended, user="ops-bot", old=old)["allowed"] is True
    assert authz.reviews == []


def test_a_job_without_secrets_asks_no_review(kube, webhook):
    authz = Authorizer(kube, {})
    assert webhook(rlhfjob(), user="mallory")["allowed"] is True
    assert authz.reviews == []


def test_a_review_the_api_server_refuses_refuses_the_job(kube, webhook):
    kube.kmock[f"post {SAR_PATH}"] << 403 << {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 403, "reason": "Forbidden",
        "message": "subjectaccessreviews.authorization.k8s.io is forbidden: User cannot create resource"}
    response = webhook(rlhfjob(spec=spec_with(logging={"wandb": WANDB})), user="alice")
    assert response["allowed"] is False
    assert '"wandb"' in response["status"]["message"] and "SubjectAccessReview failed" in response["status"]["message"]


def test_service_account_token_projection_is_refused_by_the_webhook(kube, webhook):
    authz = Authorizer(kube, {})
    spec = spec_with(cluster={"volumes": [{"name": "tok", "mountPath": "/tok", "source": {"projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}}]}}}]})
    response = webhook(rlhfjob(spec=spec), user="cluster-admin")
    assert response["allowed"] is False and response["status"]["code"] == 422
    assert "spec.cluster.volumes[0].source.projected.sources[0].serviceAccountToken" in response["status"]["message"]
    assert authz.reviews == []


def test_without_the_webhook_a_job_naming_secrets_fails_naming_them_and_the_fix(kube, operator):
    operator.start()
    kube.create(rlhfjob(spec=secret_spec()))
    status = wait_phase(kube, "Failed", "SecretsNotAllowed")
    for word in ('Secret "wandb"', 'Secret "db-password"', "RLHF_ALLOW_SECRET_REFERENCES", "webhook"):
        assert word in status["message"], status["message"]
    assert conditions(status)["Validated"]["reason"] == "SecretsNotAllowed"
    assert kube.list(RAYJOBS, NS) == []
    assert kube.list("v1/configmaps", NS, label_selector="rlhf.dev/job-name=demo") == []


def test_without_the_webhook_secrets_are_used_when_the_settings_allow_them(kube, operator):
    operator.start(allow_secret_references=True)
    kube.create(rlhfjob(spec=secret_spec()))
    rayjob = kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    volumes = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "db", "secret": {"secretName": "db-password"}} in volumes


def test_with_the_webhook_launch_trusts_admission(kube, webhook):
    """Jobs reach launch only through admission, which reviewed their Secrets: no second check."""
    kube.create(rlhfjob(spec=secret_spec()))
    assert kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))


def test_launch_refuses_service_account_tokens_stored_around_the_crd(kube, operator):
    """A job stored without the CRD's rule (an older CRD) is still refused at launch."""
    operator.start(allow_secret_references=True)
    spec = spec_with(checkpoint={"path": "/ckpt", "volume": {"projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "audience": "vault"}}]}}})
    kube.create(rlhfjob(spec=spec))
    status = wait_phase(kube, "Failed", "ValidationFailed")
    assert "spec.checkpoint.volume.projected.sources[0].serviceAccountToken" in status["message"]
    assert kube.list(RAYJOBS, NS) == []
