"""In-cluster entrypoint of the RayJob: ``python -m rlhf_workers --config /etc/rlhf/config/worker.json``.

Reads the :class:`~rlhf_api.workerconfig.WorkerConfig` the operator mounted, joins the
Ray cluster KubeRay started (``ray.init(address="auto")``; a local Ray when there is none),
serves the progress endpoint on ``progress_port`` and runs the training loop. Exit code 0 when
training finished, 1 when it failed (the reason is the last log line and the progress
endpoint's ``message``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from rlhf_api.names import ENV_CONFIG
    from rlhf_api.workerconfig import CONFIG_DIR, CONFIG_FILE, WorkerConfig

    parser = argparse.ArgumentParser(prog="python -m rlhf_workers", description="Run an RLHFJob's training loop.")
    parser.add_argument("--config", default=os.environ.get(ENV_CONFIG, f"{CONFIG_DIR}/{CONFIG_FILE}"),
                        help="the worker config (default: $RLHF_CONFIG or %(default)s)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--stop-driver", action="store_true",
                        help="send SIGTERM to the driver running --config and wait until it has checkpointed and "
                             "exited (the head pod's preStop hook: Kubernetes signals only PID 1, a shell)")
    parser.add_argument("--check-code", action="store_true",
                        help="import the reward/agent code, call it on a few rows of the job's data, check the "
                             "contract, and exit 0 (passed), 1 (failed) or 2 (could not check); no Ray, no GPU "
                             "(the operator's preflight pod, and `rlhf run` before it starts Ray)")
    parser.add_argument("--result-file", default=None,
                        help="with --check-code: write the outcome as JSON here (the pod's termination-message file)")
    parser.add_argument("--check-timeout", type=float, default=None,
                        help="with --check-code: seconds one call may take (default: reward.timeoutSeconds)")
    args = parser.parse_args(argv)
    if args.stop_driver:
        return stop_driver(args.config)
    if args.check_code:
        from .code_check import main as check_code

        return check_code(args.config, args.result_file, args.check_timeout)

    config = WorkerConfig.load(args.config)
    logging.basicConfig(level=config.spec.logging.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("rlhf_workers")
    for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    if config.create_tiny_model:  # the smoke job: no model to download, one made here (before any actor loads it)
        from .tiny import ensure_tiny_model

        if ensure_tiny_model(config.spec.model.path):
            log.info("wrote a tiny random-init model to %s (rlhf.dev/create-tiny-model)", config.spec.model.path)

    import ray

    from .metrics import ProgressServer
    from .session import Stopped
    from .train import LogReporter, train

    progress = ProgressServer(config.progress_port)  # up before Ray, so the operator sees "starting"
    own_ray = not ray.is_initialized()
    if own_ray:
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), logging_level=logging.WARNING)
        except ConnectionError:
            log.warning("no Ray cluster to join; starting a local one")
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    result = None
    stopped = False
    try:
        result = train(config, max_steps=args.max_steps, reporter=LogReporter(), progress=progress)
    except Stopped as exc:  # SIGTERM (the pod is going away): the last completed step is checkpointed
        log.warning("%s", exc)
        stopped = True
    except Exception as exc:  # noqa: BLE001 - the job fails with a readable reason
        log.error("training failed: %s: %s", type(exc).__name__, exc, exc_info=not _user_fault(exc))
    finally:
        if own_ray:
            ray.shutdown()
    if not stopped:  # a stopped driver has its grace period to exit, not the linger time
        _linger(progress, config.progress_linger_seconds, log)  # not on Ctrl-C: that skips this line
    progress.close()
    if stopped:
        return 128 + signal.SIGTERM
    if result is None:
        return 1
    log.info("finished %d steps; final model in %s", result.steps, result.final_model)
    return 0


def _drivers(config: str) -> list[int]:
    """Processes running ``python -m rlhf_workers --config CONFIG`` (not a ``--stop-driver`` like this one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "rlhf_workers" in args and "--stop-driver" not in args and "--config" in args and \
                args.index("--config") + 1 < len(args) and args[args.index("--config") + 1] == config:
            found.append(int(entry.name))
    return found


def stop_driver(config: str, poll_s: float = 0.5) -> int:
    """SIGTERM the driver of ``config``: it ends after its current step with a checkpoint; wait for it."""
    pids = _drivers(config)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    print(f"rlhf_workers: asked {len(pids)} driver(s) to checkpoint and stop: {pids}", file=sys.stderr)
    while any(Path(f"/proc/{pid}").exists() and _running(pid) for pid in pids):
        time.sleep(poll_s)  # the pod's terminationGracePeriodSeconds bounds this wait
    return 0


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _linger(progress, seconds: float, log: logging.Logger) -> None:
    """Keep the final report (finished or failed) up until the operator has polled it.

    The Ray job ends when this process exits, and KubeRay then deletes the cluster, the
    endpoint with it: a poller every 15 s saw the last step of a run only by luck.
    """
    if seconds > 0 and progress.port is not None:
        log.info("serving the final progress report for %.0f s", seconds)
        time.sleep(seconds)


def _user_fault(exc: BaseException) -> bool:
    from .agent import AgentError
    from .data import DataError
    from .reward import RewardError

    return isinstance(exc, (RewardError, AgentError, DataError, NotImplementedError))


if __name__ == "__main__":
    sys.exit(main())
