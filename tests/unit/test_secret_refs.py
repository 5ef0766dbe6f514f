"""Which Secrets a spec names (what the webhook reviews and launch refuses without it), and the
projected service-account credentials the model refuses outright, in the CRD's words too."""

import copy
from pathlib import Path

import pytest
import yaml

from rlhf_api.secrets import SecretReference, credential_projection_problems, describe, secret_references
from rlhf_api.validation import InvalidJob, parse_job, parse_spec
from support.jobs import MINIMAL_SPEC, rlhfjob

ROOT = Path(__file__).resolve().parents[2]


def spec_with(**sections):
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec.update(sections)
    return spec


def refs(spec):
    return secret_references(parse_spec(spec))


def test_a_spec_without_secrets_names_none():
    assert refs(MINIMAL_SPEC) == []


def test_every_place_a_secret_can_be_named_is_listed_with_its_field():
    spec = spec_with(
        reward={"remote": {"url": "https://rm.example/score", "tokenSecretRef": {"name": "rm-token", "key": "t"}}},
        logging={"wandb": {"project": "p", "apiKeySecretRef": {"name": "wandb", "key": "api-key"}}},
        checkpoint={"path": "/ckpt", "volume": {"secret": {"secretName": "ckpt-secret"}}},
        cluster={"imagePullSecrets": ["regcred"], "volumes": [
            {"name": "a", "mountPath": "/a", "source": {"secret": {"secretName": "db-password"}}},
            {"name": "b", "mountPath": "/b", "source": {"projected": {"sources": [
                {"configMap": {"name": "cm"}}, {"secret": {"name": "api-keys"}}]}}},
            {"name": "c", "mountPath": "/c", "source": {"csi": {"driver": "secrets-store.csi.k8s.io",
                                                              "nodePublishSecretRef": {"name": "vault-creds"}}}},
            {"name": "d", "mountPath": "/d", "source": {"persistentVolumeClaim": {"claimName": "data"}}},
        ]},
    )
    assert refs(spec) == [
        SecretReference("spec.logging.wandb.apiKeySecretRef.name", "wandb"),
        SecretReference("spec.reward.remote.tokenSecretRef.name", "rm-token"),
        SecretReference("spec.checkpoint.volume.secret.secretName", "ckpt-secret"),
        SecretReference("spec.cluster.volumes[0].source.secret.secretName", "db-password"),
        SecretReference("spec.cluster.volumes[1].source.projected.sources[1].secret.name", "api-keys"),
        SecretReference("spec.cluster.volumes[2].source.csi.nodePublishSecretRef.name", "vault-creds"),
        SecretReference("spec.cluster.imagePullSecrets[0]", "regcred"),
    ]
    assert describe(refs(spec)[:1]) == 'Secret "wandb" (spec.logging.wandb.apiKeySecretRef.name)'


@pytest.mark.parametrize("example", ["math-gsm8k", "remote-reward"])
def test_the_examples_that_name_secrets_are_found(example):
    doc = yaml.safe_load((ROOT / "examples" / example / "job.yaml").read_text())
    assert refs(doc["spec"]), example


@pytest.mark.parametrize("kind", ["serviceAccountToken", "podCertificate"])
@pytest.mark.parametrize("where", ["cluster", "checkpoint"])
def test_projected_service_account_credentials_are_refused_naming_the_field(kind, where):
    inner = {"serviceAccountToken": {"path": "token", "audience": "vault"},
             "podCertificate": {"signerName": "example.com/s", "keyType": "ED25519"}}[kind]
    source = {"projected": {"sources": [{"configMap": {"name": "cm"}}, {kind: inner}]}}
    if where == "cluster":
        spec = spec_with(cluster={"volumes": [{"name": "tok", "mountPath": "/tok", "source": source}]})
        field = f"spec.cluster.volumes[0].source.projected.sources[1].{kind}"
    else:
        spec = spec_with(checkpoint={"path": "/ckpt", "volume": source})
        field = f"spec.checkpoint.volume.projected.sources[1].{kind}"
    with pytest.raises(InvalidJob) as caught:
        parse_job(rlhfjob(spec))
    message = "; ".join(str(e) for e in caught.value.errors)
    assert field in message and "service-account credentials" in message, message


def test_other_projections_are_fine():
    source = {"projected": {"sources": [{"configMap": {"name": "cm"}}, {"downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]}}
    assert credential_projection_problems(source) == []
    parse_job(rlhfjob(spec_with(cluster={"volumes": [{"name": "p", "mountPath": "/p", "source": source}]})))


def test_the_crd_refuses_service_account_tokens_too():
    """The generated CRD carries the same rule, so `kubectl apply` without the webhook refuses it as well."""
    import celpy
    from rlhf_api.cluster import NO_CREDENTIAL_PROJECTION_CEL

    env = celpy.Environment()
    program = env.program(env.compile(NO_CREDENTIAL_PROJECTION_CEL))

    def allowed(source):
        return bool(program.evaluate({"self": celpy.json_to_cel(source)}))
    assert allowed({"secret": {"secretName": "x"}})
    assert allowed({"projected": {"sources": [{"secret": {"name": "x"}}]}})
    assert not allowed({"projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}})
    crd = (ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml").read_text()
    assert crd.count("!has(s.serviceAccountToken)") == 2  # cluster.volumes[].source and checkpoint.volume
