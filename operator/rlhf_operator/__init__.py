"""RLHF Operator: the RLHFJob API, its rendering to KubeRay objects, and the kopf operator.

Importing the package has no side effects, except under `kopf run -m rlhf_operator`, where
the handlers must register on import (`rlhf operator` and `kopf run -m rlhf_operator.main`
do the same explicitly).
"""

import sys as _sys

if "kopf.cli" in _sys.modules and _sys.argv[1:2] == ["run"]:
    from . import main as _main  # noqa: F401
