"""`kubectl get rlhf -o wide`: the CRD's printer columns point at status fields the operator writes.

The Ray dashboard URL goes from the RayJob (KubeRay's status.dashboardURL) through status.mirror
into the RLHFJob's status.dashboardURL, which the wide-only Dashboard column prints."""

from rlhf_api import crd
from rlhf_api.jobstatus import RLHFJobStatus
from rlhf_operator import status as st

URL = "demo-raycluster-x7k2p-head-svc.team-a.svc.cluster.local:8265"


def jsonpath(obj, path: str):
    """A printer column's jsonPath: dotted field names, as CRD printer columns use them."""
    for key in path.lstrip(".").split("."):
        obj = (obj or {}).get(key)
    return obj


def test_dashboard_column_is_wide_only_and_prints_the_mirrored_url():
    columns = {c["name"]: c for c in crd.crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    dashboard = columns["Dashboard"]
    assert dashboard["priority"] == 1 and dashboard["type"] == "string"  # priority 1: shown with -o wide only
    rayjob = {"metadata": {"name": "demo", "namespace": "team-a"},
              "status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "rayClusterName": "demo-raycluster-x7k2p",
                         "dashboardURL": URL}}
    patch = st.mirror({}, rayjob, generation=1)
    job = {"status": patch.status}
    assert jsonpath(job, dashboard["jsonPath"]) == URL
    # The status model (and so the CRD's schema) keeps the field: the API server does not prune it.
    assert RLHFJobStatus.model_validate(patch.status).dashboard_url == URL
    assert "dashboardURL" in crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"][
        "properties"]


def test_every_printer_column_reads_a_field_of_the_schema():
    version = crd.crd()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        node = schema
        for key in column["jsonPath"].lstrip(".").split("."):
            if key == "metadata":
                break
            node = node["properties"][key]
