"""The Ray side: worker actors per role, placed with a placement group, and the driver's handles on them.

Roles: ``engine`` (rollout), ``policy`` (a DeepSpeed trainer rank), ``ref`` (reference model,
when KL is on), ``critic`` (for ``gae``), plus reward workers. One actor class,
:class:`RoleWorker`, hosts any set of roles, so the two placements are just two groupings:

* **colocated** (hybrid engine; the default when everything fits one machine): ``trainers``
  workers, each holding a rollout engine, a policy rank, and the reference/critic when
  needed. Rollouts are split over the workers; weights move in memory.
* **distributed**: ``rollout.engines`` engine workers, ``trainers`` policy workers, a reference
  worker and ``trainers`` critic workers, each its own process (its own GPU on a cluster);
  weights move through :mod:`rlhf_workers.weight_sync`.

Reward workers (:class:`RewardWorker`) load the user's reward once per worker and score
batches; faults come back as :class:`~rlhf_workers.reward.RewardError` with the sample index.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf_api.spec import RLHFJobSpec

from .batch import MicroBatch
from .reward import RewardContractError, RewardError, RewardFunctionError, RewardResult, make_reward_executor
from .rollout import Generation, SamplingConfig, make_engine
from .weight_sync import (ColocatedSync, CollectiveSync, ObjectStoreSync, SyncGroup, TensorLayout, WeightSync,
                          module_layout, send_parameters)

logger = logging.getLogger(__name__)

#: Environment every worker process gets (vLLM in-process, quiet tokenizers, OpenMP threads that sleep).
#:
#: ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP (libgomp) otherwise spins a thread that reaches
#: the end of a parallel region until its partners arrive. When the cores are shared (other
#: processes, or the trainer and engine of another worker on the same node) the partner is often
#: descheduled, and Ray runs its workers at nice 15, so the spinning thread burns the slice the
#: partner needs. Measured on a loaded 2-core machine with the ~25M model, 2 threads per worker:
#: one generate call took 10-12 s of CPU (16-22 s wall) spinning, 1.4 s (1.6 s wall) passive;
#: an update 8-12 s of CPU against 5-6 s (bench/README.md, bench_vs_trl).
WORKER_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
}
HEAD_NODE = "node:__internal_head__"  #: Ray's resource of the head node (ray._common.constants)
PLACEMENT_TIMEOUT_S = float(os.environ.get("RLHF_PLACEMENT_TIMEOUT_S", "900"))


# --------------------------------------------------------------------------- worker actor


class RoleWorker:
    """One process hosting some of: rollout engine, policy rank, reference model, critic rank."""

    def __init__(self, spec: dict, roles: Sequence[str], *, rank: int = 0, world_size: int = 1,
                 threads: Optional[int] = None, engine_seed: int = 0, total_optimizer_steps: int = 1,
                 max_model_len: int = 2048):
        if threads and not torch.cuda.is_available():
            torch.set_num_threads(threads)  # before vLLM starts: it pins the thread count afterwards
        self.spec = RLHFJobSpec.model_validate(spec)
        self.roles = set(roles)
        self.rank, self.world_size = rank, world_size
        self.engine_seed = engine_seed
        self.total_optimizer_steps = total_optimizer_steps
        self.max_model_len = max_model_len
        self.engine = self.policy = self.ref = self.critic = None
        self.sync_group: Optional[SyncGroup] = None  #: trainer rank 0's end of the collective weight push

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the DeepSpeed world (this node's IP and a free port)."""
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, master: Optional[tuple[str, int]] = None) -> dict:
        from .trainer import CriticTrainer, PolicyTrainer, ReferenceModel, init_distributed

        spec, started = self.spec, time.perf_counter()
        if self.roles & {"policy", "critic"}:
            init_distributed(self.rank, self.world_size, *master)
        if "policy" in self.roles:
            self.policy = PolicyTrainer(spec.model.path, spec, total_optimizer_steps=self.total_optimizer_steps,
                                        world_size=self.world_size)
        if "critic" in self.roles:
            self.critic = CriticTrainer(spec.model.critic_path or spec.model.path, spec,
                                        total_optimizer_steps=self.total_optimizer_steps, world_size=self.world_size)
        if "ref" in self.roles:
            self.ref = ReferenceModel(spec.model.path, spec)
        if "engine" in self.roles:
            rollout = spec.rollout
            if self.policy is not None and torch.cuda.is_available():
                # Sharing the GPU with a trainer: leave it room (verl/OpenRLHF sleep the engine instead).
                rollout = rollout.model_copy(update={"gpu_memory_utilization": min(rollout.gpu_memory_utilization, 0.5)})
            dtype = torch.bfloat16 if spec.training.bf16 and torch.cuda.is_available() else torch.float32
            self.engine = make_engine(rollout.backend, spec.model.path, rollout_spec=rollout, model_spec=spec.model,
                                      seed=self.engine_seed, max_model_len=self.max_model_len, dtype=dtype)
        return {"roles": sorted(self.roles), "rank": self.rank, "seconds": time.perf_counter() - started,
                "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "pid": os.getpid()}

    # rollout
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Generation]]:
        return self.engine.generate(prompts, sampling)

    def load_engine_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        self.engine.load_weights(weights)

    def sync_colocated_engine(self) -> None:
        self.engine.load_weights(self.policy.iter_weights())

    # collective weight sync (trainer rank 0 sends, engine workers receive; see weight_sync)
    def weight_layout(self) -> list[TensorLayout]:
        return module_layout(self.policy.module)

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int) -> str:
        if self.engine is not None:
            return self.engine.join_weight_group(host, port, first_rank, world_size)
        self.sync_group = SyncGroup(host, port, first_rank, world_size)
        return self.sync_group.backend

    def broadcast_weights(self, bucket_bytes: int) -> int:
        return send_parameters(self.policy.module, bucket_bytes, self.sync_group)

    def receive_weights(self, layout: list[TensorLayout], bucket_bytes: int) -> int:
        return self.engine.receive_weights(layout, bucket_bytes)

    def gather_weights(self, send: bool) -> Optional[list[tuple[str, torch.Tensor]]]:
        weights = [(name, t.cpu()) if send else None for name, t in self.policy.iter_weights(clone=send)]
        return weights if send else None

    # forward passes
    def policy_logprobs(self, mbs: list[MicroBatch]) -> list[torch.Tensor]:
        return self.policy.logprobs(mbs)

    def ref_logprobs(self, mbs: list[MicroBatch]) -> list[torch.Tensor]:
        return self.ref.logprobs(mbs)

    def critic_values(self, mbs: list[MicroBatch]) -> list[torch.Tensor]:
        return self.critic.values(mbs)

    # updates
    def train_policy(self, steps: list[list[MicroBatch]]) -> dict[str, float]:
        return self.policy.train(steps)

    def train_critic(self, steps: list[list[MicroBatch]]) -> dict[str, float]:
        return self.critic.train(steps)

    # checkpoints
    def save_checkpoint(self, directory: str, tag: str) -> None:
        if self.policy is not None:
            self.policy.save_checkpoint(os.path.join(directory, "policy"), tag)
        if self.critic is not None:
            self.critic.save_checkpoint(os.path.join(directory, "critic"), tag)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        if self.policy is not None:
            self.policy.load_checkpoint(os.path.join(directory, "policy"), tag)
        if self.critic is not None:
            self.critic.load_checkpoint(os.path.join(directory, "critic"), tag)

    def save_hf(self, directory: str) -> None:
        self.policy.save_hf(directory)


# --------------------------------------------------------------------------- reward actor


class RewardWorker:
    """Loads the reward (function file in sandboxed processes, server client or reward model) once and
    scores batches; samples whose call raised, timed out or broke the contract come back as ``faults``."""

    def __init__(self, kind: str, options: dict, policy: Optional[dict] = None, env: Optional[dict[str, str]] = None):
        self.kind, self.options, self.policy, self.env = kind, options, policy, env
        self.executor = None

    def setup(self) -> Optional[dict]:
        try:
            self.executor = make_reward_executor(self.kind, self.options, self.policy, self.env)
        except RewardError as exc:
            return _fault(exc)
        return None

    def score(self, queries: list[str], prompts: list[str], labels: list) -> dict:
        try:
            result = self.executor.score(queries, prompts, labels)
        except RewardFunctionError as exc:
            return _fault(exc, _first_failing_sample(self.executor, queries, prompts, labels))
        except RewardError as exc:
            return _fault(exc)
        return {"rewards": result.rewards, "scores": result.scores, "extra_logs": result.extra_logs,
                "warnings": result.warnings, "faults": result.faults}


def _fault(exc: RewardError, sample: Optional[int] = None) -> dict:
    index = exc.sample_index if exc.sample_index is not None else sample
    return {"error": exc.message, "type": type(exc).__name__, "sample_index": index}


def _first_failing_sample(executor, queries, prompts, labels, limit: int = 256) -> Optional[int]:
    """Which sample makes a raising reward_func raise: call it on samples one by one (bounded)."""
    for i in range(min(len(queries), limit)):
        try:
            executor.score(queries[i:i + 1], prompts[i:i + 1], labels[i:i + 1])
        except RewardFunctionError:
            return i
        except RewardError:
            continue
    return None


class RewardPool:
    """The driver's view of the reward workers: one batch in, validated rewards out."""

    def __init__(self, workers: Sequence[ray.actor.ActorHandle]):
        self.workers = list(workers)
        for fault in ray.get([w.setup.remote() for w in self.workers]):
            if fault:
                raise _as_error(fault, None)

    def score(self, queries: list[str], prompts: list[str], labels: list) -> RewardResult:
        chunks = split_evenly(list(range(len(queries))), len(self.workers))
        refs = [w.score.remote([queries[i] for i in c], [prompts[i] for i in c], [labels[i] for i in c])
                for w, c in zip(self.workers, chunks) if c]
        parts = []
        for chunk, out in zip([c for c in chunks if c], ray.get(refs)):
            if "error" in out:
                raise _as_error(out, chunk[0], prompts)
            parts.append(RewardResult(rewards=out["rewards"], scores=out["scores"], extra_logs=out["extra_logs"],
                                      warnings=out["warnings"], faults=out.get("faults", [])))
        return RewardResult.concat(parts)


def _as_error(fault: dict, offset: Optional[int], prompts: Optional[list[str]] = None) -> RewardError:
    index = fault.get("sample_index")
    message = fault["error"]
    if index is not None and offset is not None:
        index += offset
        if fault["type"] == "RewardFunctionError":
            prompt = prompts[index] if prompts else ""
            message += f"\nThe first sample that makes it raise on its own is sample {index} (prompt {prompt[:80]!r})."
    cls = RewardContractError if fault["type"] == "RewardContractError" else RewardError
    return cls(message, sample_index=index)


def split_evenly(items: list, parts: int) -> list[list]:
    """``parts`` contiguous chunks whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + size + (1 if k < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out


# --------------------------------------------------------------------------- the cluster


def make_weight_sync(spec: RLHFJobSpec, cluster: "Cluster") -> WeightSync:
    """The weight push for the placement and ``training.weightSync``."""
    if cluster.placement == "colocated":
        return ColocatedSync(cluster.workers)
    choice = spec.training.weight_sync
    if choice.method == "objectStore":
        return ObjectStoreSync(cluster.policy.actors, cluster.engines.actors)
    per_engine = spec.rollout.tensor_parallel_size if spec.rollout.backend == "vllm" else 1
    return CollectiveSync(cluster.policy.actors, cluster.engines.actors, workers_per_engine=per_engine,
                          bucket_bytes=choice.bucket_mb << 20)


def resolve_placement(spec: RLHFJobSpec) -> str:
    """``cluster.placement``, with ``auto`` = colocated when one machine does all the compute
    (distributed for tensor-parallel engines and for ``algorithm.async``, which need separate engines)."""
    placement = spec.cluster.placement
    if placement != "auto":
        return placement
    if spec.rollout.tensor_parallel_size > 1 or spec.algorithm.async_.enabled:  # async overlaps separate processes
        return "distributed"
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    use_gpus = any(n["Resources"].get("GPU", 0) > 0 for n in nodes)
    compute = [n for n in nodes if n["Resources"].get("GPU" if use_gpus else "CPU", 0) > 0]
    return "colocated" if len(compute) <= 1 else "distributed"


@dataclass
class WorkerPlan:
    roles: tuple[str, ...]
    rank: int = 0  #: rank in its DeepSpeed world (policy/critic), else 0
    world: str = ""  #: which DeepSpeed world: "train" (policy, or policy+critic colocated), "critic", or ""
    gpus: float = 0.0


def plan_workers(spec: RLHFJobSpec, placement: str, use_gpus: bool) -> list[WorkerPlan]:
    """Which processes to start and what each hosts."""
    trainers = spec.training.trainers
    kl_on = spec.algorithm.kl.coef > 0
    critic_on = spec.algorithm.advantage_estimator == "gae"
    gpu = 1.0 if use_gpus else 0.0
    if placement == "colocated":
        if spec.rollout.engines != trainers:
            logger.info("colocated placement: one rollout engine per trainer (%d); rollout.engines=%d is not used",
                        trainers, spec.rollout.engines)
        roles = ("engine", "policy") + (("ref",) if kl_on else ()) + (("critic",) if critic_on else ())
        return [WorkerPlan(roles, rank=r, world="train", gpus=gpu) for r in range(trainers)]
    plans = [WorkerPlan(("engine",), gpus=gpu * spec.rollout.tensor_parallel_size) for _ in range(spec.rollout.engines)]
    plans += [WorkerPlan(("policy",), rank=r, world="train", gpus=gpu) for r in range(trainers)]
    if kl_on:
        plans.append(WorkerPlan(("ref",), gpus=gpu))
    if critic_on:
        plans += [WorkerPlan(("critic",), rank=r, world="critic", gpus=gpu) for r in range(trainers)]
    return plans


def worker_env(spec: RLHFJobSpec, threads: Optional[int]) -> dict[str, str]:
    """The environment of every worker process: :data:`WORKER_ENV`, the thread count, then the job's own.

    spec.cluster.env reaches every pod on Kubernetes; its literal values reach every worker process
    too, last, so a job may set its own ``OMP_WAIT_POLICY`` (local runs: a valueFrom entry has no
    value here, and must not blank the variable).
    """
    return {**WORKER_ENV, **({"OMP_NUM_THREADS": str(threads)} if threads else {}), **spec.cluster.plain_env()}


def required_cpus(spec: RLHFJobSpec, placement: str) -> int:
    """Logical CPUs the workers ask Ray for on a CPU-only machine (one each)."""
    return len(plan_workers(spec, placement, use_gpus=False))


@dataclass
class RoleGroup:
    """The workers that host one role, and the worker methods that serve it.

    The four groups differ only in these names, so the driver calls ``cluster.ref.forward(...)``
    instead of looking a role string up in a table at every call site. A worker may be in
    several groups (colocated: each worker is in all of them).
    """

    role: str  #: as in :attr:`WorkerPlan.roles`
    forward_method: Optional[str] = None  #: the :class:`RoleWorker` method of its forward pass
    train_method: Optional[str] = None  #: the :class:`RoleWorker` method of its update
    actors: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.actors)

    def __iter__(self):
        return iter(self.actors)

    def forward(self, per_worker: list[list[MicroBatch]]) -> list[list[torch.Tensor]]:
        """Per worker, its micro-batches' outputs (logprobs or values), in order."""
        return ray.get([getattr(w, self.forward_method).remote(mbs) for w, mbs in zip(self.actors, per_worker)])

    def train(self, per_worker: list[list[list[MicroBatch]]]) -> list[ray.ObjectRef]:
        """Start one update on every worker; the refs of their stats (policy and critic may run together)."""
        return [getattr(w, self.train_method).remote(steps) for w, steps in zip(self.actors, per_worker)]


@dataclass
class Cluster:
    """Handles on the started workers, grouped by role (a worker may appear in several groups)."""

    placement: str
    workers: list = field(default_factory=list)
    engines: RoleGroup = field(default_factory=lambda: RoleGroup("engine"))
    policy: RoleGroup = field(default_factory=lambda: RoleGroup("policy", "policy_logprobs", "train_policy"))
    ref: RoleGroup = field(default_factory=lambda: RoleGroup("ref", "ref_logprobs"))
    critic: RoleGroup = field(default_factory=lambda: RoleGroup("critic", "critic_values", "train_critic"))
    rewards: Optional[RewardPool] = None
    weight_sync: Optional[WeightSync] = None
    setup_info: list = field(default_factory=list)
    _pg: Any = None
    _reward_actors: list = field(default_factory=list)

    def group(self, role: str) -> RoleGroup:
        """The group of a role named in a :class:`WorkerPlan`."""
        return next(g for g in (self.engines, self.policy, self.ref, self.critic) if g.role == role)

    @classmethod
    def start(cls, spec: RLHFJobSpec, *, placement: str, reward: Optional[tuple[str, dict]], total_optimizer_steps: int,
              max_model_len: int, threads: Optional[int] = None, reward_workers: int = 1) -> "Cluster":
        use_gpus = ray.cluster_resources().get("GPU", 0) > 0
        plans = plan_workers(spec, placement, use_gpus)
        cluster = cls(placement=placement)
        bundles = [{"CPU": 1, **({"GPU": p.gpus} if p.gpus else {})} for p in plans]
        cluster._pg = placement_group(bundles, strategy="PACK")
        if not cluster._pg.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
            remove_placement_group(cluster._pg)
            raise RuntimeError(
                f"Ray could not place the workers within {PLACEMENT_TIMEOUT_S:.0f}s: they need {bundles}"
                f" and the cluster has {ray.cluster_resources()}")
        env = {"env_vars": worker_env(spec, threads)}
        payload = spec.model_dump(mode="json")
        worlds: dict[str, list] = {}
        engine_index = 0
        for i, plan in enumerate(plans):
            world_size = sum(1 for p in plans if p.world == plan.world) if plan.world else 1
            actor = ray.remote(RoleWorker).options(
                num_cpus=1, num_gpus=plan.gpus, runtime_env=env, max_concurrency=1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(cluster._pg, placement_group_bundle_index=i),
            ).remote(payload, plan.roles, rank=plan.rank, world_size=world_size, threads=threads,
                     engine_seed=spec.training.seed + engine_index, total_optimizer_steps=total_optimizer_steps,
                     max_model_len=max_model_len)
            engine_index += "engine" in plan.roles
            cluster.workers.append(actor)
            if plan.world:
                worlds.setdefault(plan.world, []).append(actor)
            for role in plan.roles:
                cluster.group(role).actors.append(actor)
        # Each DeepSpeed world meets at its rank 0; all workers start in parallel.
        masters = {name: ray.get(members[0].address.remote()) for name, members in worlds.items()}
        setup = []
        for plan, actor in zip(plans, cluster.workers):
            setup.append(actor.setup.remote(masters.get(plan.world)))
        if reward is not None:  # agents score their own episodes
            kind, options = reward
            cluster._reward_actors = [
                # on the head: the pod that cluster.rewardRuntimeClassName puts under its RuntimeClass
                ray.remote(RewardWorker).options(num_cpus=0, runtime_env=env, resources={HEAD_NODE: 0.001}).remote(
                    kind, options, spec.reward.model_dump(), spec.cluster.plain_env())
                for _ in range(reward_workers)
            ]
        try:
            cluster.setup_info = ray.get(setup)
            if cluster._reward_actors:
                cluster.rewards = RewardPool(cluster._reward_actors)
        except BaseException:
            cluster.shutdown()
            raise
        try:
            cluster.weight_sync = make_weight_sync(spec, cluster)
        except BaseException:
            cluster.shutdown()
            raise
        return cluster

    # ---- rollout
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Generation]]:
        """Responses for each prompt, in order; prompts are split evenly over the engines."""
        return [g for part in ray.get(self._generate_refs(prompts, sampling)) for g in part]

    async def generate_async(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Generation]]:
        parts = await asyncio.gather(*self._generate_refs(prompts, sampling))
        return [g for part in parts for g in part]

    def _generate_refs(self, prompts, sampling) -> list:
        chunks = split_evenly(prompts, len(self.engines))
        return [e.generate.remote(c, sampling) for e, c in zip(self.engines, chunks) if c]

    # ---- checkpoints
    def save_checkpoint(self, directory: str, tag: str) -> None:
        ray.get([w.save_checkpoint.remote(directory, tag) for w in self._trainer_workers()])

    def load_checkpoint(self, directory: str, tag: str) -> None:
        ray.get([w.load_checkpoint.remote(directory, tag) for w in self._trainer_workers()])

    def save_hf(self, directory: str) -> None:
        ray.get([w.save_hf.remote(directory) for w in self.policy])

    def _trainer_workers(self) -> list:
        seen, out = set(), []
        for w in self.policy.actors + self.critic.actors:
            if w._actor_id not in seen:
                seen.add(w._actor_id)
                out.append(w)
        return out

    def shutdown(self) -> None:
        for actor in self.workers + self._reward_actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._pg is not None:
            try:
                remove_placement_group(self._pg)
            except Exception:  # noqa: BLE001
                pass
            self._pg = None
