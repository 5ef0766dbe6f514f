"""The handlers' shared state is kopf's memo: handed in by `rlhf operator`, installed at startup under `kopf run`."""

from support.operator_env import NS


def test_the_handlers_share_the_memo_the_operator_was_handed(kube, operator, running_job):
    running_job()
    context = operator.context
    assert context.metrics is operator.metrics and context.metrics.rayjobs_created == 1
    # launch and the mirror noted the job in the table the background loop polls from ...
    kube.wait_for(lambda: (context.active.get((NS, "demo")) or {}).get("phase") == "Running")
    # ... and the loop, started with the operator's memo, polls it.
    kube.wait_for(lambda: context.metrics.progress_polls > 0)


def test_without_a_memo_configure_installs_the_context_register_made(kube, operator, running_job):
    """kopf makes a plain kopf.Memo, copied for each resource: every copy, and the loop that
    started with the operator's own, must share the one active-jobs table and counters."""
    running_job(memo=False)  # as under `kopf run`
    assert operator.context is None
    assert operator.metrics.rayjobs_created == 1
    kube.wait_for(lambda: operator.metrics.phases.get((NS, "demo")) == "Running")
    kube.wait_for(lambda: operator.metrics.progress_polls > 0)
