"""Untrusted code, contained: user reward and agent code (and what it runs) in sandboxed processes.

* :mod:`.limits` - rlimits, the stripped environment, the scratch directory (no privilege needed);
* :mod:`.netns` - no network: a user + network namespace, where the kernel allows it;
* :mod:`.landlock` - read-only file system outside scratch, no TCP (Landlock, where available);
* :mod:`.child` - the sandboxed process itself; :mod:`.channel` and :mod:`.values` - how it talks
  to its parent (JSON up, never pickles);
* :mod:`.pool` - :class:`SandboxPool`, calls spread over sandboxed processes, each bounded in time;
* :mod:`.run` - :func:`run_python` / :func:`run_command` for rewards that run generated code.

docs/rewards.md says which of these walls hold under the restricted Pod Security Standard.
"""

from __future__ import annotations

from .limits import Limits
from .pool import Outcome, SandboxPool, SandboxStartError, available_cores
from .run import RunResult, run_command, run_python

__all__ = ["Limits", "SandboxPool", "Outcome", "SandboxStartError", "available_cores", "RunResult", "run_command",
           "run_python"]
