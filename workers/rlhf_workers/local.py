"""``rlhf run JOB.yaml --output DIR``: the same job on an embedded Ray, on this machine.

Paths in the job file (``model.path``, ``model.tokenizerPath``, ``model.criticPath``,
``data.prompts``, ``reward.function.path``, ``reward.model.path``, ``agent.path``) that are
relative resolve against the job file's directory. ``configMapRef`` code comes from
``configmap_files`` (``--configmap NAME=FILE``: a ConfigMap manifest or the source file itself),
else from a file named like the key next to the job file; otherwise it is an error.

Everything goes to the output directory: ``metrics.jsonl``, ``reward_curve.png``,
``checkpoints/`` and ``final_model/``. ``checkpoint.path`` is a cluster volume path and is
not used locally: run again with the same ``--output`` to resume from its checkpoints.

A job whose ``metadata.annotations`` has ``rlhf.dev/create-tiny-model: "true"`` gets its
model created with :func:`rlhf_workers.tiny.make_tiny_model` when ``model.path`` does not
exist yet (the quickstart uses this).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from rlhf_api.names import TINY_MODEL_ANNOTATION

logger = logging.getLogger(__name__)

LOCAL_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",  # as every worker gets it (cluster.WORKER_ENV): no spinning on shared cores
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "0",
}


def _err(text: str) -> None:
    print(f"rlhf run: {text}", file=sys.stderr)


def _resolve(path: Optional[str], base: Path) -> Optional[str]:
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    beside = base / p
    return str(beside.resolve()) if beside.exists() or not p.exists() else str(p.resolve())


def _resolve_prompts(prompts: str, base: Path) -> str:
    """``data.prompts`` for a local run: a path resolved like the others, a hub dataset id kept as it is."""
    from .data import is_hub_id, split_data_dir

    source, data_dir = split_data_dir(prompts)
    if is_hub_id(prompts) and not (base / source).exists() and not Path(source).exists():
        return prompts
    return _resolve(source, base) + (f"@{data_dir}" if data_dir else "")


def _configmap_code(ref, role_file: str, configmap_files: dict[str, str], job_dir: Path, field: str) -> str:
    """Source text of a configMapRef, from a local file."""
    from rlhf_api.validation import ANY_KEY, load_configmap_file

    key = ref.key or role_file
    given = configmap_files.get(ref.name)
    if given is not None:
        data = load_configmap_file(given, job_dir)
        if key in data or ANY_KEY in data:
            return data.get(key, data.get(ANY_KEY))
        raise ValueError(f"{field}: ConfigMap {ref.name!r} in {given} has no key {key!r}"
                         f" (it has: {', '.join(data) or 'nothing'})")
    beside = job_dir / key
    if beside.is_file():
        print(f"rlhf run: {field}: using {beside} for ConfigMap {ref.name!r} key {key!r}", file=sys.stderr)
        return beside.read_text()
    raise ValueError(f"{field}: ConfigMap {ref.name!r} is not available locally; pass --configmap {ref.name}=FILE "
                     f"(the ConfigMap manifest or the {key} file itself)")


def prepare_local_config(job_path: str, output_dir: str, configmap_files: Optional[dict[str, str]] = None):
    """The :class:`WorkerConfig` that ``rlhf run`` hands the driver: paths resolved, code files written."""
    from rlhf_api.validation import load_job
    from rlhf_api.workerconfig import AGENT_FILE, REWARD_FILE, WorkerConfig

    from .tiny import is_model_dir, make_tiny_model

    job = load_job(job_path)
    spec = job.spec
    job_dir = Path(job_path).resolve().parent
    out = Path(output_dir).resolve()
    code_dir = out / "code"
    configmap_files = configmap_files or {}

    model = spec.model.model_copy(update={
        "path": _resolve(spec.model.path, job_dir),
        "tokenizer_path": _resolve(spec.model.tokenizer_path, job_dir),
        "critic_path": _resolve(spec.model.critic_path, job_dir),
    })
    if not Path(model.path).exists():
        if job.metadata.annotations.get(TINY_MODEL_ANNOTATION, "").lower() == "true":
            print(f"rlhf run: creating a tiny random-init model in {model.path} ({TINY_MODEL_ANNOTATION})", file=sys.stderr)
            make_tiny_model(model.path)
        elif re.fullmatch(r"[\w-]+/[\w.-]+", spec.model.path):
            model = model.model_copy(update={"path": spec.model.path})  # a hub id: transformers/vLLM fetch it
        else:
            raise ValueError(f"model.path: {model.path} does not exist (rlhf run uses local model directories;"
                             " `rlhf tiny-model DIR` writes a tiny one)")
    elif not is_model_dir(model.path):
        raise ValueError(f"model.path: {model.path} is not a Hugging Face model directory (no config.json and weights)")
    data = spec.data.model_copy(update={"prompts": _resolve_prompts(spec.data.prompts, job_dir)})
    updates = {"model": model, "data": data}

    def code_file(source, role_file: str, field: str) -> str:
        if source.path is not None:
            path = _resolve(source.path, job_dir)
            if not Path(path).is_file():
                raise ValueError(f"{field}.path: {path} does not exist")
            return path
        text = source.inline if source.inline is not None else _configmap_code(
            source.config_map_ref, role_file, configmap_files, job_dir, f"{field}.configMapRef")
        code_dir.mkdir(parents=True, exist_ok=True)
        (code_dir / role_file).write_text(text)
        return str(code_dir / role_file)

    reward_path = agent_path = None
    if spec.reward is not None:
        reward = spec.reward
        if reward.function is not None:
            reward_path = code_file(reward.function, REWARD_FILE, "spec.reward.function")
        if reward.model is not None:
            updates["reward"] = reward.model_copy(update={"model": reward.model.model_copy(
                update={"path": _resolve(reward.model.path, job_dir)})})
    if spec.agent is not None:
        agent_path = code_file(spec.agent, AGENT_FILE, "spec.agent")
    return WorkerConfig(
        job_name=job.metadata.name,
        namespace=job.metadata.namespace,
        spec=spec.model_copy(update=updates),
        reward_code_path=reward_path,
        agent_code_path=agent_path,
        output_dir=str(out),
        progress_port=0,
    )


class RichReporter:
    """A rich progress bar: step, reward, score and ETA."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = None

    def start(self, total_steps, first_step):
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=first_step, info="")

    def step(self, row):
        info = f"reward {row['reward/mean']:.3f}  score {row['score/mean']:.3f}  {row['time/step']:.2f}s/step"
        self.progress.update(self.task, completed=row["step"], info=info)

    def message(self, text):
        self.console.print(f"[dim]{text}[/dim]")

    def close(self):
        self.progress.stop()


class QuietReporter:
    def start(self, total_steps, first_step): ...
    def step(self, row): ...
    def message(self, text): ...
    def close(self): ...


# Every process of a local run's embedded Ray inherits this variable from ``rlhf run``: "<pid>:<start time>"
# of the run that started it. A process whose run no longer exists is an orphan of a killed run.
RUN_MARKER = "RLHF_LOCAL_RUN"


def _start_time(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _run_id(pid: int) -> Optional[str]:
    start = _start_time(pid)
    return f"{pid}:{start}" if start else None


def orphaned_ray_processes() -> list[int]:
    """Processes left by a local run that was killed (``kill -9``): they carry the marker of a run that is gone."""
    orphans: list[int] = []
    if not Path("/proc/self/stat").exists():
        return orphans
    needle = RUN_MARKER.encode() + b"="
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # another user's process, or gone
        for item in environ.split(b"\0"):
            if item.startswith(needle):
                owner = item[len(needle):].decode(errors="replace")
                pid = owner.split(":", 1)[0]
                if pid.isdigit() and _run_id(int(pid)) != owner:
                    orphans.append(int(entry.name))
                break
    return orphans


def cleanup_orphans(timeout: float = 10.0) -> int:
    """SIGKILL the Ray processes of killed local runs (never those of a run still going); how many there were."""
    orphans = orphaned_ray_processes()
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in orphans):
        time.sleep(0.05)
    if orphans:
        _err(f"stopped {len(orphans)} Ray process(es) left behind by a killed run")
    return len(orphans)


class CleanupAction(argparse.Action):
    """``rlhf run --cleanup``: stop the Ray processes that killed local runs left behind, and exit."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.pop("nargs", None)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        count = cleanup_orphans()
        print(f"rlhf run --cleanup: {count} Ray process(es) of killed runs stopped", file=sys.stderr)
        parser.exit(0)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting for its parent


def check_code_first(config) -> int:
    """The operator's code check, before Ray starts: ``python -m rlhf_workers --check-code`` in a
    subprocess (the user's code never runs in this process) on a few rows of the job's data.
    0 when it passed; else 2 (the job cannot run) after saying why."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlhf-check-") as scratch:
        config_file, result_file = Path(scratch) / "worker.json", Path(scratch) / "result.json"
        config_file.write_text(config.to_json())
        done = subprocess.run([sys.executable, "-m", "rlhf_workers", "--check-code", "--config", str(config_file),
                               "--result-file", str(result_file)], capture_output=True, text=True)
        try:
            outcome = json.loads(result_file.read_text())
        except (OSError, ValueError):
            outcome = {"ok": False, "message": (done.stderr or done.stdout).strip()[-2000:] or f"exit {done.returncode}"}
    if done.returncode == 0 and outcome.get("ok"):
        if outcome.get("warning"):  # faults the job's reward.maxErrorRate tolerates: training will count them
            _err(f"warning: the reward code check passed with faults: {outcome['warning']}")
        return 0
    if done.returncode == 2:  # the check could not run: the job's data or config is unusable
        _err(f"could not check the reward/agent code before starting Ray: {outcome.get('message')}")
    else:
        _err(f"the reward/agent code failed its check before Ray was started: {outcome.get('message')}; fix the"
             " code (spec.preflight: false skips this check)")
    return 2


def run_local(job_path: str, output_dir: str, *, configmap_files: Optional[dict[str, str]] = None,
              max_steps: Optional[int] = None, quiet: bool = False) -> int:
    """Run ``job_path`` locally; returns the exit code (0 done, 1 failed while running, 2 unusable job,
    130 interrupted by Ctrl-C, 143 stopped by SIGTERM after saving a checkpoint)."""
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    cleanup_orphans()
    run_id = _run_id(os.getpid())
    if run_id:
        os.environ[RUN_MARKER] = run_id
    from rlhf_api.validation import InvalidJob

    from .agent import AgentError
    from .data import DataError
    from .reward import RewardError

    try:
        config = prepare_local_config(job_path, output_dir, configmap_files)
    except InvalidJob as exc:
        for error in exc.errors:
            _err(str(error))
        return 2
    except (ValueError, OSError) as exc:
        _err(str(exc))
        return 2
    if getattr(config.spec, "preflight", True) and (config.reward_code_path or config.agent_code_path):
        failed = check_code_first(config)
        if failed:
            return failed

    import ray

    from .cluster import required_cpus
    from .session import Stopped
    from .train import train

    cores = os.cpu_count() or 1
    spec = config.spec
    concurrent = spec.training.trainers if spec.cluster.placement in ("auto", "colocated") else \
        max(spec.training.trainers, spec.rollout.engines)
    if spec.algorithm.async_.enabled:  # engines generate while trainers update: all busy at once
        concurrent = spec.training.trainers + spec.rollout.engines
    threads = max(1, cores // max(1, concurrent))
    needed = max(required_cpus(spec, "colocated"), required_cpus(spec, "distributed"))
    started = time.perf_counter()
    own_ray = not ray.is_initialized()  # tests and notebooks may bring their own
    if own_ray:
        ray.init(num_cpus=max(cores, needed), include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=bool(os.environ.get("RLHF_WORKER_LOGS")))
    reporter = QuietReporter() if quiet else RichReporter()
    try:
        result = train(config, max_steps=max_steps, reporter=reporter, threads=threads)
    except Stopped as exc:
        _err(str(exc))
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _err("interrupted; the workers are stopped. Run again with the same --output to resume from the last checkpoint")
        return 130
    except RewardError as exc:
        _err(f"reward error: {exc}")
        return 1
    except AgentError as exc:
        _err(f"agent error: {exc}")
        return 1
    except DataError as exc:
        _err(str(exc))
        return 1
    except NotImplementedError as exc:
        _err(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - a run that fails says why and exits 1
        cause = getattr(exc, "cause", None) or exc
        _err(f"failed: {type(cause).__name__}: {cause}")
        if not isinstance(cause, (RuntimeError, ValueError)):
            logger.debug("failure", exc_info=True)
        return 1
    finally:
        if own_ray:
            ray.shutdown()
    history = result.history
    if not quiet:
        last = history[-1] if history else {}
        print(f"done: {result.steps} steps in {time.perf_counter() - started:.0f}s ({result.placement}); "
              f"final reward {last.get('reward/mean', float('nan')):.3f}; model in {result.final_model}; "
              f"metrics in {result.output_dir / 'metrics.jsonl'}", file=sys.stderr)
    return 0
