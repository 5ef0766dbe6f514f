"""``rlhf convert -- <OpenRLHF training command>``: the RLHFJob that means the same training.

    rlhf convert -- ray job submit --address=http://127.0.0.1:8265 -- python3 -m openrlhf.cli.train_ppo_ray \\
        --pretrain Qwen/Qwen2.5-1.5B --remote_rm_url ./reward_func.py --label_key answer ...
    rlhf convert -f train.sh --configmaps     # the command from a script; ConfigMaps for the code too
    rlhf convert --table                      # the flag table (docs/convert.md)

Every flag of both OpenRLHF generations is in rlhf_cli.openrlhf_flags. A flag that has no
effect on a job, or that the RLHFJob cannot express, is named on stderr; nothing is dropped
silently. The job goes to stdout only if `rlhf validate` would accept it.

Exit codes: 0 converted completely; 3 converted, but some flags were not (named on stderr);
2 the command cannot be read or its job would be invalid (nothing printed); 1 a reward or
agent file that --configmaps or --inline needs cannot be read.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from .commandline import Command, CommandError, parse_command, split_command
from .openrlhf_flags import BEFORE_0_10, BY_NAME, DEFAULTS_BEFORE_0_10, FLAGS, UNSET, Flag, flag_table_markdown
from .output import EXIT_INVALID, EXIT_UNREADABLE, FORMATS, formatted

EXIT_INCOMPLETE = 3
CODE_MODES = ("ref", "configmap", "inline")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass
class Conversion:
    """The job (and ConfigMaps) a command becomes, and what stderr says about it."""

    job: dict
    configmaps: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user must do or know
    ignored: list[str] = field(default_factory=list)  # flags with no effect on a job
    unconverted: list[str] = field(default_factory=list)  # flags the job cannot express

    @property
    def complete(self) -> bool:
        return not self.unconverted


class _Values:
    """The command's flags by table row, converted to their types; the last of a repeat wins."""

    def __init__(self, command: Command):
        self.given: dict[str, tuple[str, Any]] = {}  # key -> (spelling used, value)
        self.unresolved: dict[str, str] = {}  # key -> the flag as written, with a shell variable in it
        for name, raw in command.flags:
            flag = BY_NAME[name]
            if any("$" in value for value in raw):
                self.unresolved[flag.key] = " ".join([name, *raw])
                self.given.pop(flag.key, None)
                continue
            self.unresolved.pop(flag.key, None)
            self.given[flag.key] = (name, _typed(flag, name, raw))

    def __contains__(self, key: str) -> bool:
        return key in self.given

    def get(self, key: str, default: Any = None) -> Any:
        return self.given[key][1] if key in self.given else default

    def spelling(self, key: str) -> str:
        return self.given[key][0] if key in self.given else f"--{key}"


def _typed(flag: Flag, name: str, raw: list[str]) -> Any:
    try:
        if flag.kind == "bool":
            if raw and raw[0].lower() not in _TRUE + _FALSE:
                raise ValueError
            return not raw or raw[0].lower() in _TRUE
        if flag.kind in ("int", "float"):
            return (int if flag.kind == "int" else float)(raw[0])
        if flag.kind == "pair":
            return [float(v) for v in raw]
        return list(raw) if flag.kind == "list" else raw[0]
    except ValueError:
        wanted = {"bool": "true or false", "int": "a whole number", "float": "a number", "pair": "two numbers"}[flag.kind]
        raise CommandError(f"{name} expects {wanted} (got {' '.join(raw)!r})") from None


def _put(spec: dict, path: str, value: Any) -> None:
    node = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _job_name(model: str) -> str:
    """A DNS label from the model's last path part: 'deepseek-ai/deepseek-math-7b-base' → 'deepseek-math-7b-base'."""
    base = re.sub(r"[^a-z0-9-]+", "-", PurePosixPath(model.rstrip("/")).name.lower()).strip("-")
    base = base if base[:1].isalpha() else f"rlhf-{base}".rstrip("-")
    return base[:40].rstrip("-") or "rlhf-job"


def _in_model_order(spec: dict) -> dict:
    """The spec's sections in the order the model (and every example) writes them."""
    from rlhf_api.spec import RLHFJobSpec

    order = [f.alias or n for n, f in RLHFJobSpec.model_fields.items()]
    return {key: spec[key] for key in sorted(spec, key=lambda k: order.index(k) if k in order else len(order))}


class _Converter:
    def __init__(self, command: Command, *, name: Optional[str], namespace: Optional[str], code: str, base_dir: Path):
        self.command, self.values = command, _Values(command)
        self.code, self.namespace = code, namespace
        self.base_dir = base_dir / command.working_dir if command.working_dir else base_dir
        for key, written in self.values.unresolved.items():
            if key in ("pretrain", "prompt_data", "remote_rm_url", "reward_pretrain", "agent_func_path"):
                raise CommandError(f"{written}: a shell variable rlhf convert cannot see; set it in the script"
                                   " (NAME=value before the command) or give the command with it expanded")
        model = self.values.get("pretrain")
        if not model:
            raise CommandError("the command names no model: --pretrain (or --actor.model_name_or_path) is required")
        if not self.values.get("prompt_data"):
            raise CommandError("the command names no prompt data: --prompt_data (or --data.prompt_dataset) is required")
        self.name = name or _job_name(model)
        self.spec: dict = {}
        self.out = Conversion(job={})

    # ---- bookkeeping
    def ignore(self, key: str, why: str) -> None:
        self.out.ignored.append(f"{self.values.spelling(key)}: ignored: {why}")

    def lose(self, key: str, why: str) -> None:
        self.out.unconverted.append(f"{self.values.spelling(key)}: not converted: {why}")

    def run(self) -> Conversion:
        for written in self.values.unresolved.values():
            self.out.unconverted.append(f"{written}: not converted: a shell variable rlhf convert cannot see")
        self._table_rows()
        self._reward()
        self._resources()
        self._lengths()
        self._checkpoint()
        self._logging()
        self._prefix_and_unknown()
        metadata = {"name": self.name, **({"namespace": self.namespace} if self.namespace else {})}
        self.out.job = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": metadata,
                        "spec": _in_model_order(self.spec)}
        return self.out

    def _table_rows(self) -> None:
        """Mapped rows (with OpenRLHF's defaults where ours differ), ignored and unsupported ones."""
        old = [name for name, _ in self.command.flags if name in BEFORE_0_10]
        defaults = DEFAULTS_BEFORE_0_10 if old else {}
        if old:
            self.out.notes.append(f"{old[0]} is a flag of OpenRLHF before 0.10: its defaults are used"
                                  f" ({', '.join(f'{k} {v}' for k, v in defaults.items())})")
        for flag in FLAGS:
            given = flag.key in self.values
            if flag.status == "mapped" and given:
                _put(self.spec, flag.field, self.values.get(flag.key))
            elif flag.status == "mapped" and flag.field in defaults:
                _put(self.spec, flag.field, defaults[flag.field])
            elif flag.status == "mapped" and flag.openrlhf_default is not UNSET:
                _put(self.spec, flag.field, flag.openrlhf_default)
            elif flag.status == "ignored" and given:
                self.ignore(flag.key, flag.note or "the operator decides this")
            elif flag.status == "unsupported" and given:
                self.lose(flag.key, flag.note or "the RLHFJob has no such setting")
        self._data_quirks()
        dtype = self.values.get("param_dtype")
        if dtype is not None:
            if dtype in ("bf16", "fp32"):
                _put(self.spec, "training.bf16", dtype == "bf16")
            else:
                self.lose("param_dtype", f"{dtype} is not supported (bf16 or fp32)")
        loss = self.values.get("policy_loss_type")
        if loss is not None and loss != "ppo":
            self.lose("policy_loss_type", f"{loss} is not supported; the job trains with the PPO loss")

    def _data_quirks(self) -> None:
        """What OpenRLHF does with prompt flags that a job spells differently."""
        sources = [p for p in str(self.values.get("prompt_data")).split(",") if p]
        if len(sources) > 1:
            _put(self.spec, "data.prompts", sources[0])
            self.lose("prompt_data", f"one prompt source per job; used {sources[0]}, not {', '.join(sources[1:])}")
        template = self.values.get("input_template")
        if template is not None and "{}" not in template:
            del self.spec["data"]["inputTemplate"]
            self.ignore("input_template", "it has no '{}', so OpenRLHF does not use it either")

    # ---- reward and agent
    def _code_source(self, path: str, role: str) -> dict:
        """A reward or agent file as the job refers to it: a ConfigMap key (made here with
        --configmaps), or the code inline (--inline)."""
        file = Path(path) if Path(path).is_absolute() else self.base_dir / path
        key = re.sub(r"[^-._a-zA-Z0-9]", "_", Path(path).name)
        configmap = f"{self.name}-{role}"
        if self.code == "ref":
            self.out.notes.append(f"spec.{'reward.function' if role == 'reward' else 'agent'}: create the ConfigMap first:"
                                  f" kubectl create configmap {configmap} --from-file={key}={path}"
                                  " (or convert with --configmaps or --inline)")
            return {"configMapRef": {"name": configmap, "key": key}}
        text = file.read_text()  # OSError: exit 1, nothing printed
        if self.code == "inline":
            return {"inline": text}
        metadata = {"name": configmap, **({"namespace": self.namespace} if self.namespace else {})}
        self.out.configmaps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {key: text}})
        return {"configMapRef": {"name": configmap, "key": key}}

    def _reward(self) -> None:
        v = self.values
        agent, urls, model = v.get("agent_func_path"), v.get("remote_rm_url"), v.get("reward_pretrain")
        if agent:
            self.spec["agent"] = self._code_source(agent, "agent")
            if "max_steps" in v:
                self.spec["agent"]["maxSteps"] = v.get("max_steps")
            for key in ("remote_rm_url", "reward_pretrain"):
                if key in v:
                    self.ignore(key, "with an agent, OpenRLHF scores by the agent alone")
            if "reward_clip_range" in v:
                self.lose("reward_clip_range", "an agent's rewards are not clipped")
            self._reward_model_only_flags(None)
            return
        if "max_steps" in v:
            self.lose("max_steps", "it is the agent's step limit and the command has no --agent_func_path")
        if urls:
            first, *more = [u.strip() for u in urls.split(",") if u.strip()]
            if more:
                self.lose("remote_rm_url", f"one reward per job; used {first}, not {', '.join(more)}")
            reward = ({"remote": {"url": first}} if re.match(r"^https?://", first)
                      else {"function": self._code_source(first, "reward")})
            if re.match(r"^https?://(localhost|127\.[0-9.]+|\[::1\]|0\.0\.0\.0)([:/]|$)", first):
                self.out.notes.append(f"spec.reward.remote.url: {first} is this machine; in the job's pods it is the"
                                      " pod itself: give the reward server's Service address")
            if model:
                self.ignore("reward_pretrain", "OpenRLHF scores with --remote_rm_url when both are given")
        elif model:
            reward = {"model": {"path": model.split(",")[0]}}
            if "," in model:
                self.lose("reward_pretrain", "one reward model per job; used the first")
            if self.spec.get("algorithm", {}).get("advantageEstimator", "gae") == "gae" and "critic_pretrain" not in v:
                _put(self.spec, "model.criticPath", reward["model"]["path"])  # OpenRLHF's default critic
        else:
            raise CommandError("the command names no reward: give --remote_rm_url (a .py file or an http(s) URL),"
                               " --reward_pretrain or --agent_func_path")
        reward["clipRange"] = v.get("reward_clip_range", [-10.0, 10.0])  # OpenRLHF always clips
        self.spec["reward"] = reward
        self._reward_model_only_flags(reward)

    def _reward_model_only_flags(self, reward: Optional[dict]) -> None:
        if self.values.get("normalize_reward"):
            if reward is not None and "model" in reward:
                reward["model"]["normalize"] = True
            else:
                self.lose("normalize_reward", "only a reward model's scores are normalized")

    # ---- resources
    def _resources(self) -> None:
        v, c = self.values, self.command
        nodes = v.get("actor_num_nodes", c.launcher_nodes or 1)
        per_node = v.get("actor_num_gpus_per_node", c.launcher_gpus or 8)
        _put(self.spec, "training.trainers", nodes * per_node)
        _put(self.spec, "cluster.trainer", {"replicas": nodes, "gpus": per_node})
        if "actor_num_gpus_per_node" not in v and c.launcher_gpus is None:
            self.out.notes.append("no --actor_num_gpus_per_node: OpenRLHF's default of 8 GPUs per node is used"
                                  f" (training.trainers: {nodes * per_node})")
        colocated = v.get("colocate_all_models") and not v.get("async_train")
        if v.get("colocate_all_models") and v.get("async_train"):
            self.ignore("colocate_all_models", "with --async_train OpenRLHF colocates only the DeepSpeed models;"
                                               " generation runs apart, as in the job")
        if colocated:
            _put(self.spec, "cluster.placement", "colocated")
        engines, tp = v.get("vllm_num_engines"), v.get("vllm_tensor_parallel_size", 1)
        if not engines and v.get("async_train"):
            _put(self.spec, "rollout.backend", "transformers")
            self.out.notes.append("no vLLM engines (--vllm_num_engines absent or 0) but --async_train: generation"
                                  " cannot share the trainers' processes, so the job runs one transformers engine"
                                  " on a GPU of its own; add --vllm_num_engines N for vLLM")
            _put(self.spec, "cluster.rollout", {"replicas": 1, "gpus": 1})
            return
        if not engines:
            _put(self.spec, "rollout.backend", "transformers")
            _put(self.spec, "cluster.placement", "colocated")
            self.out.notes.append("no vLLM engines (--vllm_num_engines absent or 0): OpenRLHF generates with the"
                                  " trained model itself; so does the job (rollout.backend: transformers,"
                                  " cluster.placement: colocated)")
            _put(self.spec, "cluster.rollout", {"replicas": 0})
            return
        _put(self.spec, "rollout.engines", engines)
        _put(self.spec, "rollout.tensorParallelSize", tp)
        if colocated:
            _put(self.spec, "cluster.rollout", {"replicas": 0})
            return
        total = engines * tp
        per_pod = min(total, max(tp, per_node // tp * tp))
        _put(self.spec, "cluster.rollout", {"replicas": -(-total // per_pod), "gpus": per_pod})

    def _lengths(self) -> None:
        v = self.values
        total = v.get("max_len")
        if total is None:
            return
        new = v.get("max_new_tokens", v.get("generate_max_len"))
        prompt = v.get("prompt_max_len")
        if new is None:
            prompt = prompt or total // 2
            new = total - prompt
            self.out.notes.append(f"{v.spelling('max_len')} {total} without --max_new_tokens: OpenRLHF gives each"
                                  f" response what its prompt leaves; the job uses promptMaxLen {prompt} and"
                                  f" maxNewTokens {new}")
        elif prompt is None:
            prompt = total - new
        if prompt < 1 or new < 1:
            raise CommandError(f"{v.spelling('max_len')} {total} leaves no room for prompt and response ({prompt} + {new})")
        _put(self.spec, "rollout.promptMaxLen", prompt)
        _put(self.spec, "rollout.maxNewTokens", new)

    # ---- checkpoints and logging
    def _checkpoint(self) -> None:
        v = self.values
        path = v.get("ckpt_path") or v.get("save_path")
        if path and v.get("ckpt_path") and v.get("save_path"):
            self.ignore("save_path", "the final model is saved under checkpoint.path with the checkpoints")
        if path:
            if not path.startswith("/"):
                relative = str(PurePosixPath(path.removeprefix("./")))
                path = f"/checkpoints/{relative}".rstrip("/")
                self.out.notes.append(f"checkpoint.path: the relative {v.get('ckpt_path') or v.get('save_path')}"
                                      f" became {path}")
            _put(self.spec, "checkpoint.path", path)
        self.out.notes.append("checkpoint: add checkpoint.volume (a persistentVolumeClaim) to keep the trained model"
                              " after the job's Ray cluster is gone")

    def _logging(self) -> None:
        v = self.values
        key = v.get("use_wandb")
        if key:
            secret = f"{self.name}-wandb"
            wandb = {"project": v.get("wandb_project", "openrlhf_train_ppo"),
                     "apiKeySecretRef": {"name": secret, "key": "WANDB_API_KEY"}}
            if v.get("wandb_org"):
                wandb["entity"] = v.get("wandb_org")
            if v.get("wandb_run_name"):
                wandb["runName"] = v.get("wandb_run_name")
            _put(self.spec, "logging.wandb", wandb)
            self.out.notes.append(f"logging.wandb: the W&B key on the command line is not written out; create the"
                                  f" Secret: kubectl create secret generic {secret} --from-literal=WANDB_API_KEY=<your key>")
        else:
            for other in ("wandb_project", "wandb_org", "wandb_run_name"):
                if other in v:
                    self.ignore(other, "W&B is off without --use_wandb")
        if v.get("use_tensorboard"):
            _put(self.spec, "logging.tensorboard", True)
            self.out.notes.append(f"logging.tensorboard: event files go next to the checkpoints, not to"
                                  f" {v.get('use_tensorboard')}")

    def _prefix_and_unknown(self) -> None:
        c = self.command
        for option in c.ignored_prefix:
            self.out.ignored.append(f"{option}: ignored: a launcher option; the operator starts the Ray cluster")
        for lost in c.lost_prefix:
            self.out.unconverted.append(f"{lost}: not converted")
        for name, values in c.unknown:
            shown = " ".join([name, *values])
            self.out.unconverted.append(f"{shown}: not converted: not a flag of openrlhf.cli.train_ppo_ray"
                                        " that rlhf convert knows")


def convert(tokens: list[str], *, name: Optional[str] = None, namespace: Optional[str] = None,
            code: str = "ref", base_dir: Path = Path(".")) -> Conversion:
    """The RLHFJob for an OpenRLHF command (its words, or one string holding all of it).
    Raises CommandError for a command that is not one, InvalidJob when the job would be refused,
    OSError when a file that --configmaps/--inline reads cannot be read."""
    from rlhf_api.validation import parse_job

    result = _Converter(parse_command(tokens), name=name, namespace=namespace, code=code, base_dir=base_dir).run()
    parse_job(result.job)
    return result


def cmd_convert(args: argparse.Namespace) -> int:
    from rlhf_api.validation import InvalidJob

    if args.table:
        sys.stdout.write(flag_table_markdown())
        return 0
    tokens = list(args.command)
    if tokens[:1] == ["--"]:
        tokens = tokens[1:]
    try:
        if args.file:
            tokens = split_command(sys.stdin.read() if args.file == "-" else Path(args.file).read_text())
        elif not tokens:
            raise CommandError("give the OpenRLHF command after `--`, or -f FILE")
        code = "inline" if args.inline else "configmap" if args.configmaps else "ref"
        result = convert(tokens, name=args.name, namespace=args.namespace, code=code, base_dir=Path(args.base_dir))
    except CommandError as exc:
        print(f"rlhf convert: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except InvalidJob as exc:
        for error in exc.errors:
            print(f"rlhf convert: the job would be invalid: {error}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"rlhf convert: {exc.filename}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    sys.stdout.write(formatted(result.configmaps + [result.job], args.output))
    for line in result.notes + result.ignored + result.unconverted:
        print(f"rlhf convert: {line}", file=sys.stderr)
    if result.complete:
        print("rlhf convert: complete: every flag is in the job or named above as ignored", file=sys.stderr)
        return 0
    print(f"rlhf convert: incomplete: {len(result.unconverted)} part(s) of the command are not in the job"
          " (named above)", file=sys.stderr)
    return EXIT_INCOMPLETE


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="print an OpenRLHF training command as an RLHFJob",
                       description="Print the RLHFJob for an OpenRLHF train_ppo_ray command. Exit 0: complete;"
                                   " 3: some flags not converted (named on stderr); 2: not convertible; 1: a file"
                                   " cannot be read.")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after `--`")
    p.add_argument("-f", "--file", help="read the command from a shell script ('-': standard input)")
    p.add_argument("--name", help="the job's name (default: from the model's name)")
    p.add_argument("-n", "--namespace", help="namespace of the job and its ConfigMaps")
    p.add_argument("-o", "--output", choices=FORMATS, default="yaml", help="print as yaml or json")
    code = p.add_mutually_exclusive_group()
    code.add_argument("--configmaps", action="store_true", help="also print ConfigMaps holding the reward/agent files")
    code.add_argument("--inline", action="store_true", help="put the reward/agent code inline in the job")
    p.add_argument("--base-dir", default=".", help="where relative reward/agent paths are read from (default: here;"
                                                   " a ray job submit --working-dir is taken under it)")
    p.add_argument("--table", action="store_true", help="print the flag table (docs/convert.md) and exit")
    p.set_defaults(func=cmd_convert)
