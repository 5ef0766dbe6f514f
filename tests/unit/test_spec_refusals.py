"""What the API server would refuse is refused by the model first, in its words, and by the CRD too."""

import pytest
import yaml

from rlhf_api.k8s_volumes import VOLUME_SOURCE_SCHEMAS
from rlhf_api.podsecurity import ALLOWED_VOLUME_TYPES
from rlhf_api.validation import InvalidJob, parse_job
from support.jobs import job
from test_crd_model_agree import crd_verdict
from k8s_schemas import KUBERAY_RAYJOB_CRD

LABEL_VALUE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must"
               " start and end with an alphanumeric character")
NAME_PART = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric"


def volume(source, mount="/models"):
    return {"cluster": {"volumes": [{"name": "models", "mountPath": mount, "source": source}]}}


def errors_of(doc):
    with pytest.raises(InvalidJob) as exc:
        parse_job(doc)
    return [str(e) for e in exc.value.errors]


CASES = [
    # Volume sources, validated as the core types they are.
    (volume({"persistentVolumeClaim": {"claimName": 7}}),
     "spec.cluster.volumes[0].source.persistentVolumeClaim.claimName: Invalid value: 7: must be of type string"),
    ({"checkpoint": {"volume": {"persistentVolumeClaim": {}}}},
     "spec.checkpoint.volume.persistentVolumeClaim.claimName: Required value"),
    ({"checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": "c", "readonly": True}}}},
     'spec.checkpoint.volume.persistentVolumeClaim.readonly: unknown field "readonly"'),
    (volume({"configMap": {"name": "code", "items": [{"key": "a"}]}}),
     "spec.cluster.volumes[0].source.configMap.items[0].path: Required value"),
    (volume({"emptyDir": {"sizeLimit": "lots"}}), "spec.cluster.volumes[0].source.emptyDir.sizeLimit: Invalid value: \"lots\": should match"),
    # Labels, annotations and nodeSelector as ValidateLabels / ValidateAnnotations see them.
    ({"cluster": {"head": {"labels": {"team": "a" * 64}}}},
     "spec.cluster.head.labels: Invalid value: '" + "a" * 64 + "': must be no more than 63 characters (the value of 'team')"),
    ({"cluster": {"trainer": {"labels": {"team": "-a"}}}}, "spec.cluster.trainer.labels: Invalid value: '-a': " + LABEL_VALUE),
    ({"cluster": {"rollout": {"nodeSelector": {"pool": "gpu pool"}}}}, "spec.cluster.rollout.nodeSelector: Invalid value: 'gpu pool': " + LABEL_VALUE),
    # The operator's own mounts.
    ({"checkpoint": {"path": "/dev/shm"}}, "spec.checkpoint.path: the operator mounts /dev/shm in every pod; mount elsewhere (got /dev/shm)"),
    ({"checkpoint": {"path": "/etc/rlhf/config/ckpt"}}, "spec.checkpoint.path: is under /etc/rlhf/config, which the operator mounts"),
    (volume({"emptyDir": {}}, "/dev/shm/x"), "spec.cluster.volumes[0].mountPath: is under /dev/shm, which the operator mounts"),
    (volume({"emptyDir": {}}, "/dev/shm/"), "spec.cluster.volumes[0].mountPath: must be an absolute path without a trailing '/'"),
    # What the API server cannot store.
    ({"training": {"seed": 2**63}},
     "spec.training.seed: must be an integer from -9223372036854775808 to 9223372036854775807 (int64), the integers"
     " the API server stores (got 9223372036854775808)"),
    ({"cluster": {"head": {"tolerations": [{"key": "a", "tolerationSeconds": -2**64}]}}}, "spec.cluster.head.tolerations[0].tolerationSeconds: must be an integer"),
    ({"rollout": {"temperature": float("inf")}}, "spec.rollout.temperature: must be a finite number: JSON, and so the API server, has no NaN or infinity (got inf)"),
    ({"algorithm": {"gamma": float("nan")}}, "spec.algorithm.gamma: must be a finite number"),
    # GPUs are an extended resource.
    ({"cluster": {"trainer": {"gpuResourceName": "memory"}}},
     "spec.cluster.trainer.gpuResourceName: Invalid value: 'memory': must be an extended resource name such as nvidia.com/gpu"),
    ({"cluster": {"trainer": {"gpuResourceName": "kubernetes.io/gpu"}}}, "spec.cluster.trainer.gpuResourceName: Invalid value: 'kubernetes.io/gpu'"),
    # The CRD's checks, now also the model's shape of them.
    ({"data": {"prompts": "/p", "inputTemplate": "no slot"}}, "spec.data.inputTemplate: inputTemplate must contain '{}'"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[m[:60] for _, m in CASES])
def test_refused_by_the_model_in_the_api_servers_words_and_by_the_crd(overrides, message):
    doc = job(**overrides)
    errors = errors_of(doc)
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert crd_verdict(doc["spec"]) != [], "the CRD must refuse it too"


@pytest.mark.parametrize("overrides, message", [
    ({"cluster": {"head": {"labels": {"a/b/c": "x"}}}}, "spec.cluster.head.labels: Invalid value: 'a/b/c': a qualified name"),
    ({"cluster": {"head": {"annotations": {"-x": "y"}}}}, "spec.cluster.head.annotations: Invalid value: '-x': " + NAME_PART),
    ({"cluster": {"head": {"nodeSelector": {"x" * 64: "y"}}}}, "spec.cluster.head.nodeSelector: Invalid value: '" + "x" * 64 + "': name part must be no more than 63 characters"),
    ({"cluster": {"head": {"annotations": {"big": "x" * 262144}}}}, "spec.cluster.head.annotations: Too long: must have at most 262144 bytes"),
])
def test_map_keys_and_sizes_are_refused_by_the_model(overrides, message):
    errors = errors_of(job(**overrides))
    assert len(errors) == 1 and errors[0].startswith(message), errors


@pytest.mark.parametrize("overrides", [
    {"cluster": {"head": {"labels": {"example.com/team": "a.b_c-1", "empty": ""}, "annotations": {"Example.com/Note": "any text"},
                          "nodeSelector": {"kubernetes.io/arch": "amd64"}, "gpuResourceName": "amd.com/gpu"}}},
    volume({"persistentVolumeClaim": {"claimName": "models", "readOnly": True}}, "/models/.cache"),
    volume({"projected": {"sources": [{"configMap": {"name": "a"}}, {"downwardAPI": {"items": [{"path": "l", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]}}),
    {"checkpoint": {"path": "/dev/shmem", "volume": {"ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}}},
    {"training": {"episodes": 2.0, "seed": 2**63 - 1}, "algorithm": {"gamma": None}},
])
def test_what_the_api_server_takes_the_model_takes(overrides):
    doc = job(**overrides)
    parse_job(doc)
    assert crd_verdict(doc["spec"]) == []


def test_whole_floats_read_as_integers_as_kubectl_sends_them():
    assert parse_job(job(training={"episodes": 2.0})).spec.training.episodes == 2


def test_the_volume_schemas_are_kuberays_copy_of_the_core_types():
    crd = yaml.safe_load(KUBERAY_RAYJOB_CRD.read_text())
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    pod = v1["properties"]["spec"]["properties"]["rayClusterSpec"]["properties"]["headGroupSpec"]["properties"]["template"]
    kuberay = pod["properties"]["spec"]["properties"]["volumes"]["items"]["properties"]

    def strip(node):
        if isinstance(node, dict):
            out = {k: strip(v) for k, v in node.items() if k != "description"}
            if out.get("type") == "array":
                out.setdefault("maxItems", 64)
            return out
        return [strip(v) for v in node] if isinstance(node, list) else node

    assert set(VOLUME_SOURCE_SCHEMAS) == ALLOWED_VOLUME_TYPES
    assert VOLUME_SOURCE_SCHEMAS == {kind: strip(kuberay[kind]) for kind in ALLOWED_VOLUME_TYPES}
