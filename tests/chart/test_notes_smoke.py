"""The chart's NOTES lead with the smoke job (no GPU, no PVC, no hub), before any job that needs them."""

import pytest

from test_helm_chart import ROOT, notes


@pytest.mark.parametrize("key", ["defaults", "namespaced"])
def test_notes_lead_with_the_smoke_job_and_name_only_files_that_exist(key):
    text = notes(key)
    applies = [line.strip() for line in text.splitlines() if " apply -" in line]
    assert applies[0].endswith("apply -k examples/smoke/"), applies
    assert "get rlhf smoke -w" in text and "no GPU" in text
    for line in applies:
        target = line.split(" apply -f ")[-1] if " apply -f " in line else line.split(" apply -k ")[-1]
        assert (ROOT / target.strip()).exists(), line
