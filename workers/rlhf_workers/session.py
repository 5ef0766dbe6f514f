"""Set-up and tear-down of a training run, so that :func:`rlhf_workers.train.train` holds the loop only.

:func:`open_session` is a context manager around the loop:

* **set-up** - seeds, tokenizer and prompt stream, the step count, the latest complete
  checkpoint, the Ray workers (:class:`~rlhf_workers.cluster.Cluster`), then the agent, the
  resumed weights and data position, the metrics log, and a ``training`` progress report
  (a resumed run reports its checkpoint and last step's numbers at once);
* **tear-down** - on success :meth:`Session.finish`: a checkpoint of the last step, the final
  model, the reward curve, a ``finished`` report; on any failure once the workers are up, a
  ``failed`` report with the reason; always the reporter, the metrics log and the workers
  closed, and the progress endpoint when the run started it itself.

A failure before the workers are up (unreadable data or tokenizer, no room for the placement
group, a reward that does not load) propagates as it is: the report stays at ``starting``, and
neither the reporter nor an endpoint this run started is closed. That is how the loop behaved
before set-up moved here; changing it belongs with the failure-path work, not this split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import random
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

import torch

from rlhf_api.names import ENV_REWARD_TOKEN, FINAL_MODEL_DIR
from rlhf_api.progress import CheckpointInfo, utc_now
from rlhf_api.workerconfig import WorkerConfig

from .agent import AgentRunner
from .checkpoint import HF_DIR, Checkpoint, Checkpoints, tag_for, write_model_card
from .cluster import Cluster, resolve_placement
from .data import PromptStream, load_prompts, load_tokenizer
from .metrics import CURVE_FILE, MetricsLog, ProgressServer, plot_reward_curve
from .rollout import SamplingConfig

# The driver's log lines keep the logger name they had before set-up moved out of train.py:
# the pod's log format prints it, and log filters may select on it.
logger = logging.getLogger("rlhf_workers.train")

CHECKPOINT_DIR = "checkpoints"


class Reporter(Protocol):
    """Where the driver tells a human how it goes (a rich progress bar locally, log lines in a cluster)."""

    def start(self, total_steps: int, first_step: int) -> None: ...
    def step(self, row: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class LogReporter:
    def start(self, total_steps, first_step):
        logger.info("training steps %d..%d", first_step + 1, total_steps)

    def step(self, row):
        logger.info("step %d/%s reward %.4f score %.4f kl %.4g loss %.4g %.2fs", row["step"], row.get("total_steps"),
                    row["reward/mean"], row["score/mean"], row["kl"], row.get("policy_loss", float("nan")),
                    row["time/step"])

    def message(self, text):
        logger.info("%s", text)

    def close(self):
        pass


class Stopped(Exception):
    """The run ended early on a signal (preemption), after saving a checkpoint of its last completed step."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@contextmanager
def stop_on_sigterm(session: "Session") -> Iterator[None]:
    """While the loop runs, SIGTERM asks it to stop after the current step; a second SIGTERM aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if session.stop_signal is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        session.stop_signal = signal.Signals(signum).name
        logger.warning("%s: stopping after the current step, with a checkpoint", session.stop_signal)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class TrainResult:
    steps: int  #: steps completed, counting resumed ones
    resumed_from: Optional[int]
    history: list[dict[str, Any]]
    output_dir: Path
    final_model: Optional[Path]
    placement: str


@dataclass
class Session:
    """What the loop works with: the job, its data, its workers, and where it reports."""

    config: WorkerConfig
    reporter: Reporter
    progress: ProgressServer
    tokenizer: Any
    prompts: PromptStream
    total_steps: int
    checkpoints: Checkpoints
    resume: Optional[Checkpoint]  #: the checkpoint this run resumed from
    placement: str
    max_model_len: int
    cluster: Cluster
    agent: Optional[AgentRunner] = None  #: multi-step episodes (``spec.agent``): they generate and score themselves
    metrics: Optional[MetricsLog] = None
    sampling: Optional[SamplingConfig] = None
    first_step: int = 0  #: steps done before this run (a resumed run's checkpoint step)
    last_sync: Optional[str] = None  #: when the engines last got new weights
    last_ckpt: Optional[CheckpointInfo] = None
    stop_signal: Optional[str] = None  #: set by SIGTERM: the loop ends after the current step with a checkpoint
    #: held while a batch is generated and while weights are pushed or the data position saved (async rollouts)
    rollout_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def spec(self):
        return self.config.spec

    @property
    def out(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def begin(self) -> None:
        """The set-up that needs the workers: agent, resumed state, metrics log, the ``training`` report."""
        spec, resume = self.spec, self.resume
        if spec.agent is not None:
            self.agent = AgentRunner(self.config.agent_code_path, self.cluster, self.tokenizer, spec.agent.max_steps,
                                     self.max_model_len, spec.rollout, policy=spec.agent, env=spec.cluster.plain_env())
        if resume is not None:
            resume = self.resume = self._load_resumable(resume)
        if resume is not None:
            self.prompts.restore(resume.state["data"])
            self.first_step = resume.step
            self.cluster.weight_sync.push()  # the engines start from the initial weights
            self.reporter.message(f"resumed from {resume.path} (step {self.first_step}, episode {self.prompts.episode}, "
                                  f"prompt {self.prompts.offset})")
        self.metrics = MetricsLog(self.out, spec.logging, job_name=self.config.job_name, resume_step=self.first_step,
                                  config=spec.model_dump(mode="json", by_alias=True))
        self.sampling = SamplingConfig.from_spec(spec.rollout, spec.algorithm.n_samples_per_prompt)
        self.progress.update(state="training", step=self.first_step, total_steps=self.total_steps, message=None,
                             **(resumed_progress(resume, self.metrics.history) if resume is not None else {}))
        self.reporter.start(self.total_steps, self.first_step)

    def _load_resumable(self, newest: Checkpoint) -> Optional[Checkpoint]:
        """Load the newest checkpoint the trainers accept: a verified one that fails to load is set aside too."""
        failures = []
        for ckpt in [newest] + [c for c in self.checkpoints.resumable() if c.step < newest.step]:
            try:
                self.cluster.load_checkpoint(str(ckpt.path), ckpt.tag)
                return ckpt
            except Exception as exc:  # noqa: BLE001 - named in the warning, and in the error when none loads
                failures.append(f"{ckpt.path}: {type(exc).__name__}: {exc}")
                self.checkpoints.quarantine(ckpt.path, f"the trainers could not load it ({type(exc).__name__}: {exc})")
        raise RuntimeError("no checkpoint could be loaded: " + "; ".join(failures))

    def save_checkpoint(self, step: int, row: Optional[dict[str, Any]] = None) -> CheckpointInfo:
        """Trainer states of ``step``, its model in Hugging Face format and the data position, written
        aside and committed once verified. ``row``: the step's metrics so far (for the model card)."""
        staging = self.checkpoints.prepare(step)
        self.cluster.save_checkpoint(str(staging), tag_for(step))
        self.save_model(staging / HF_DIR, step, row)
        with self.rollout_lock:  # async rollouts move the data position from their thread
            data = self.prompts.state()
        self.checkpoints.commit(step, {"data": data, "total_steps": self.total_steps, "time": utc_now()})
        path = self.checkpoints.path_for(step)
        self.last_ckpt = CheckpointInfo(step=step, path=str(path), time=utc_now())
        return self.last_ckpt

    def save_model(self, directory: Path, step: int, row: Optional[dict[str, Any]] = None) -> Path:
        """The policy in Hugging Face format, with its tokenizer and a model card naming the job, step and reward."""
        self.cluster.save_hf(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        rows = self.metrics.history if self.metrics is not None else []
        last = row or (rows[-1] if rows and rows[-1].get("step") == step else {})
        spec = self.spec
        write_model_card(directory, job=self.config.job_name, step=step, total_steps=self.total_steps,
                         reward_mean=last.get("reward/mean"), base_model=spec.model.path,
                         estimator=str(getattr(spec.algorithm.advantage_estimator, "value",
                                               spec.algorithm.advantage_estimator)))
        return directory

    def round_sampling(self) -> SamplingConfig:
        """Sampling for the next round of generation, seeded by the job's seed and the data position.

        The rollout engines' generators restart from this seed each round, so their state needs no
        checkpoint: a run resumed at a position samples exactly what the uninterrupted run did there.
        """
        key = f"{self.spec.training.seed}:{self.prompts.episode}:{self.prompts.offset}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:7], "big")
        return dataclasses.replace(self.sampling, seed=seed)

    def log_step(self, row: dict[str, Any]) -> None:
        """A finished step's row to metrics.jsonl (and TensorBoard/W&B), the reporter and the progress endpoint."""
        self.metrics.log(row)
        self.reporter.step(row)
        self.progress.update(step=row["step"], episode=self.prompts.episode, reward_mean=row["reward/mean"],
                             score_mean=row["score/mean"], kl=row["kl"], samples_per_second=row["samples_per_second"],
                             last_weight_sync=self.last_sync, last_checkpoint=self.last_ckpt)

    def stop(self, step: int) -> None:
        """End the run after ``step`` because of :attr:`stop_signal`: save the step (unless just saved) and raise."""
        if step > 0 and (self.last_ckpt is None or self.last_ckpt.step != step) and \
                (self.resume is None or step > self.resume.step):
            self.save_checkpoint(step)
        where = self.last_ckpt.path if self.last_ckpt else (str(self.resume.path) if self.resume else "none")
        raise Stopped(f"stopped by {self.stop_signal} after step {step}/{self.total_steps}; checkpoint {where}; "
                      "run again with the same output to resume", step)

    def finish(self, step: int) -> TrainResult:
        """The end of a run: a checkpoint of the last step (unless it is the one resumed from), the final model, the curve."""
        if self.resume is None or step > self.resume.step:
            self.save_checkpoint(step)
            self.progress.update(last_checkpoint=self.last_ckpt)
        final = self.out / FINAL_MODEL_DIR
        saved = self.checkpoints.path_for(step) / HF_DIR
        if saved.is_dir():  # the last checkpoint holds this very model: copy it rather than gather the weights again
            shutil.rmtree(final, ignore_errors=True)
            shutil.copytree(saved, final)
        else:  # resumed from a checkpoint saved before checkpoints held a Hugging Face model
            self.save_model(final, step)
        plot_reward_curve(self.metrics.history, self.out / CURVE_FILE)
        self.progress.update(state="finished", step=step, message=f"final model in {final}", final_model=str(final))
        return TrainResult(step, self.resume.step if self.resume else None, self.metrics.history, self.out, final,
                           self.placement)


@contextmanager
def open_session(config: WorkerConfig, reporter: Reporter, progress: Optional[ProgressServer] = None, *,
                 max_steps: Optional[int] = None, threads: Optional[int] = None) -> Iterator[Session]:
    """Set up a run of ``config`` on the connected Ray cluster, yield it, tear it down (see the module doc)."""
    spec = config.spec
    training, n = spec.training, spec.algorithm.n_samples_per_prompt
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    own_progress = progress is None
    progress = progress or ProgressServer(config.progress_port)
    progress.update(state="starting", message="loading data and starting workers")
    random.seed(training.seed)
    torch.manual_seed(training.seed)

    tokenizer = load_tokenizer(spec.model)
    prompts = PromptStream(load_prompts(spec.data, tokenizer, spec.rollout.prompt_max_len), training.episodes, training.seed)
    total_steps = total_steps_for(spec, len(prompts), max_steps)
    optimizer_steps_per_rollout = math.ceil(training.rollout_batch_size * n / training.train_batch_size) * training.max_epochs
    checkpoints = Checkpoints(out / CHECKPOINT_DIR, spec.checkpoint.max_keep)
    resume = checkpoints.latest()
    placement = resolve_placement(spec)
    reporter.message(f"{len(prompts)} prompts, {total_steps} steps, placement {placement}, rollout {spec.rollout.backend}")
    max_model_len = engine_max_model_len(spec)
    cluster = Cluster.start(
        spec, placement=placement, reward=reward_source(config) if spec.reward else None, threads=threads,
        total_optimizer_steps=max(1, total_steps * optimizer_steps_per_rollout), max_model_len=max_model_len,
    )
    session = Session(config, reporter, progress, tokenizer, prompts, total_steps, checkpoints, resume, placement,
                      max_model_len, cluster)
    try:
        with stop_on_sigterm(session):
            session.begin()
            yield session
    except BaseException as exc:
        progress.update(state="failed", message=str(exc)[:2000])
        raise
    finally:
        reporter.close()
        if session.metrics is not None:
            session.metrics.close()
        if session.agent is not None:
            session.agent.close()
        cluster.shutdown()
        if own_progress:
            progress.close()


def total_steps_for(spec, num_prompts: int, max_steps: Optional[int]) -> int:
    """Rollout steps: the data × episodes in rollout batches, capped by training.maxSteps / --max-steps."""
    steps = math.ceil(num_prompts * spec.training.episodes / spec.training.rollout_batch_size)
    for cap in (spec.training.max_steps, max_steps):
        if cap is not None:
            steps = min(steps, cap)
    return steps


def reward_source(config: WorkerConfig) -> tuple[str, dict]:
    """What the reward workers load: ("function", {path}), ("remote", {...}) or ("model", {...})."""
    reward = config.spec.reward
    if reward.function is not None:
        if not config.reward_code_path:
            raise ValueError("reward.function: the worker config names no reward_code_path (the reward file)")
        return "function", {"path": config.reward_code_path}
    if reward.remote is not None:
        r = reward.remote
        return "remote", {"url": r.url, "token": os.environ.get(ENV_REWARD_TOKEN) if r.token_secret_ref else None,
                          "timeout_s": r.timeout_seconds, "retries": r.retries, "batch_size": r.batch_size}
    m = reward.model
    return "model", {"path": m.path, "batch_size": m.batch_size, "normalize": m.normalize}


def engine_max_model_len(spec) -> int:
    """Prompt + response budget of the engines, within the model's position limit."""
    from transformers import AutoConfig

    wanted = spec.rollout.prompt_max_len + spec.rollout.max_new_tokens
    config = AutoConfig.from_pretrained(spec.model.path, trust_remote_code=spec.model.trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None)
    return min(wanted, limit) if limit else wanted


def resumed_progress(resume: Checkpoint, history: list[dict[str, Any]]) -> dict[str, Any]:
    """What a resumed driver reports at once: the checkpoint it resumed from, and the last step's numbers."""
    report: dict[str, Any] = {"last_checkpoint": CheckpointInfo(
        step=resume.step, path=str(resume.path), time=resume.state.get("time") or utc_now())}
    last = history[-1] if history and history[-1].get("step") == resume.step else {}
    for key, field in (("reward/mean", "reward_mean"), ("score/mean", "score_mean"), ("kl", "kl"),
                       ("samples_per_second", "samples_per_second")):
        if last.get(key) is not None:
            report[field] = last[key]
    return report
