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


class TokenAuthorizer(Authorizer):
    """Also answers `create serviceaccounts/token` reviews: ``minters`` maps (namespace, account) to users."""

    def __init__(self, kube, readers, minters):
        self.minters = minters
        super().__init__(kube, readers)

    def answer(self, request):
        attrs = request.data["spec"]["resourceAttributes"]
        if attrs.get("resource") != "serviceaccounts":
            return super().answer(request)
        self.reviews.append(request.data)
        spec = request.data["spec"]
        allowed = (attrs["verb"], attrs.get("subresource"), attrs["group"]) == ("create", "token", "") \
            and spec.get("user") in self.minters.get((attrs["namespace"], attrs["name"]), ())
        return {"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {},
                "spec": spec, "status": {"allowed": allowed}}


TOKEN_SPEC = spec_with(cluster={"serviceAccountName": "trainer-identity", "automountServiceAccountToken": True})


def test_mounting_a_token_needs_the_right_to_request_it_and_is_refused_naming_the_account(kube, webhook):  # noqa: F811
    authz = TokenAuthorizer(kube, {}, {(NS, "trainer-identity"): {"alice"}})
    response = webhook(rlhfjob(spec=TOKEN_SPEC), user="bob")
    assert response["allowed"] is False and response["status"]["code"] == 403
    message = response["status"]["message"]
    assert 'ServiceAccount "trainer-identity"' in message and "spec.cluster.automountServiceAccountToken" in message
    attrs, = [r["spec"]["resourceAttributes"] for r in authz.reviews]
    assert attrs == {"namespace": NS, "verb": "create", "group": "", "resource": "serviceaccounts",
                     "subresource": "token", "name": "trainer-identity"}
    assert webhook(rlhfjob(spec=TOKEN_SPEC), user="alice")["allowed"] is True


def test_a_service_account_without_its_token_asks_no_review(kube, webhook):  # noqa: F811
    authz = TokenAuthorizer(kube, {}, {})
    spec = spec_with(cluster={"serviceAccountName": "trainer-identity"})
    assert webhook(rlhfjob(spec=spec), user="bob")["allowed"] is True
    assert authz.reviews == []


def test_the_default_accounts_token_is_reviewed_when_asked_for_without_a_name(kube, webhook):  # noqa: F811
    authz = TokenAuthorizer(kube, {}, {})
    response = webhook(rlhfjob(spec=spec_with(cluster={"automountServiceAccountToken": True})), user="bob")
    assert response["allowed"] is False and 'ServiceAccount "default"' in response["status"]["message"]
    assert [r["spec"]["resourceAttributes"]["name"] for r in authz.reviews] == ["default"]


def test_without_the_webhook_a_mounted_token_is_refused_at_launch(kube, operator):
    operator.start()
    kube.create(rlhfjob(spec=TOKEN_SPEC))
    status = wait_phase(kube, "Failed", "SecretsNotAllowed")
    assert 'ServiceAccount "trainer-identity"' in status["message"], status["message"]
    assert kube.list(RAYJOBS, NS) == []


def test_kubectl_is_warned_about_checkpoints_that_die_with_the_pods(kube, webhook):  # noqa: F811
    response = webhook(rlhfjob(), user="alice")
    assert response["allowed"] is True
    assert any("spec.checkpoint.volume" in w for w in response.get("warnings") or []), response
