"""docs/reference.md: generated from the spec model, never stale, and field for field the CRD."""

import json
from pathlib import Path

import yaml

from rlhf_api.reference import field_paths, reference_markdown
from rlhf_api.spec import IMMUTABLE_FIELDS, MUTABLE_FIELDS

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"


def test_committed_reference_is_the_generated_one():
    assert REFERENCE.read_text() == reference_markdown(), \
        "docs/reference.md is stale: run `python -m rlhf_api.reference > docs/reference.md`"


def _crd_paths(node, path):
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}", child
        if set(child.get("properties") or ()) >= {"persistentVolumeClaim", "emptyDir"}:
            continue  # a Kubernetes VolumeSource: documented as one field
        yield from _crd_paths(child, f"{path}.{name}")
        if isinstance(child.get("items"), dict):
            yield from _crd_paths(child["items"], f"{path}.{name}[]")


def test_every_field_of_the_committed_crd_has_a_row_with_its_description_and_default():
    crd = yaml.safe_load((ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    text = REFERENCE.read_text()
    crd_paths = dict(_crd_paths(spec, "spec"))
    assert set(crd_paths) == field_paths()
    for path, node in crd_paths.items():
        parent, name = path.rsplit(".", 1)
        section = text.split(f"## `{parent}`\n", 1)[1].split("\n## ", 1)[0]
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}`"))
        assert " ".join(node.get("description", "").split()).replace("|", "\\|") in row, path
        if "default" in node and node.get("type") != "object":
            assert f"`{json.dumps(node['default'])}`" in row, path


def test_every_top_level_field_says_whether_it_may_change_on_a_running_job():
    crd = yaml.safe_load((ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml").read_text())
    top = set(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])
    assert top == set(IMMUTABLE_FIELDS) | set(MUTABLE_FIELDS), "classify new spec fields in spec.IMMUTABLE_FIELDS or MUTABLE_FIELDS"
