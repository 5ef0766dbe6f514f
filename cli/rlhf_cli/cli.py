"""The ``rlhf`` command line.

    rlhf validate JOB.yaml...       check every RLHFJob; one line per error: FILE:LINE: field: problem
    rlhf render JOB.yaml            the objects the operator would create, as YAML (-o json)
    rlhf crd                        the generated CustomResourceDefinition
    rlhf convert -- COMMAND...      an OpenRLHF training command as an RLHFJob
    rlhf run JOB.yaml --output DIR  run the job locally on an embedded Ray
    rlhf test-reward FILE.py --data SAMPLES.jsonl
    rlhf tiny-model DIR             write a tiny random model + tokenizer for local runs
    rlhf operator                   start the operator

A JOB.yaml of "-" is standard input (`kustomize build | rlhf validate -`); files are read the
way kubectl reads them (rlhf_api.yamlfile). Exit codes: 0 done, 1 a file could not be read,
2 input refused (not YAML, or not a valid RLHFJob); `rlhf convert` has its own (rlhf_cli.convert).

Commands that need the worker stack (run, test-reward, tiny-model) import it lazily, so the
operator image, which has no torch, runs the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .output import EXIT_INVALID, EXIT_UNREADABLE, FORMATS, dump_yaml_documents, formatted, worst

__all__ = ["main", "build_parser", "dump_yaml_documents"]


def _configmap_sources(pairs: Sequence[str], job_dir: Path) -> dict[str, dict[str, str]]:
    """--configmap NAME=FILE: FILE is a ConfigMap manifest, or a source file used for any key."""
    from rlhf_api.validation import FieldError, InvalidJob, load_configmap_file

    found: dict[str, dict[str, str]] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InvalidJob([FieldError("", f"--configmap expects NAME=FILE (got {pair!r})")])
        name, file = pair.split("=", 1)
        found[name] = load_configmap_file(file, job_dir)
    return found


def _resolve_code(job, configmaps: dict[str, dict[str, str]], job_dir: Path) -> dict[str, str]:
    """Source for each configMapRef: from --configmap, else a file named like the key beside
    the job file, else a placeholder (with a warning) so the rest can still be rendered."""
    from rlhf_operator.render import code_refs
    from rlhf_api.validation import ANY_KEY, FieldError, InvalidJob

    sources: dict[str, str] = {}
    errors = []
    for ref in code_refs(job.spec):
        data = configmaps.get(ref.config_map)
        beside = job_dir / ref.key
        if data is None and beside.is_file():
            print(f"rlhf: {ref.field}: using {beside} as ConfigMap {ref.config_map!r} key {ref.key!r}", file=sys.stderr)
            sources[ref.file] = beside.read_text()
        elif data is None:
            print(f"rlhf: {ref.field}: ConfigMap {ref.config_map!r} not given; the code snapshot holds a placeholder"
                  f" (pass --configmap {ref.config_map}=FILE for the real one)", file=sys.stderr)
            sources[ref.file] = f"# placeholder: the operator copies ConfigMap {ref.config_map!r} key {ref.key!r} here\n"
        elif ref.key in data or ANY_KEY in data:
            sources[ref.file] = data.get(ref.key, data.get(ANY_KEY))
        else:
            errors.append(FieldError(ref.field, f"ConfigMap {ref.config_map!r} has no key {ref.key!r}"
                                     f" (it has: {', '.join(sorted(data)) or 'nothing'})"))
    if errors:
        raise InvalidJob(errors)
    return sources


def _summary(job) -> str:
    spec = job.spec
    if spec.agent:
        source = f"agent({spec.agent.kind()}, maxSteps={spec.agent.max_steps})"
    else:
        reward = spec.reward
        detail = reward.function.kind() if reward.function else reward.remote.url if reward.remote else reward.model.path
        source = f"reward={reward.source()}({detail})"
    algo = spec.algorithm
    return (f"{job.metadata.name}: valid RLHFJob — model {spec.model.path}, {source},"
            f" {getattr(algo.advantage_estimator, 'value', algo.advantage_estimator)} × {algo.n_samples_per_prompt} samples/prompt,"
            f" rollout {spec.rollout.backend} ×{spec.rollout.engines}, {spec.training.trainers} trainer(s) ZeRO-{spec.training.zero_stage}")


def _print_errors(source: str, errors, document: str = "") -> None:
    for error in errors:
        print(error.located(source, document), file=sys.stderr)


def _as_stored(item, namespace: Optional[str]) -> dict:
    """A valid job as the operator reads it: its own metadata, the spec with every default filled in."""
    metadata = dict(item.document.data.get("metadata") or {})
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": item.job.api_version, "kind": item.job.kind, "metadata": metadata, "spec": item.job.spec.dump()}


def cmd_validate(args: argparse.Namespace) -> int:
    """Every RLHFJob of every file (or of standard input for "-"); exit 2 if any is refused, 1 if
    a file cannot be read. With -o, the valid jobs are printed with their defaults filled in and
    the summaries go to stderr."""
    from rlhf_api.advice import job_warnings
    from rlhf_api.validation import InvalidJob, load_jobs
    from rlhf_api.yamlfile import label

    status, valid = 0, []
    summaries = sys.stderr if args.output else sys.stdout
    for file in args.files:
        source = label(file)
        try:
            loaded = load_jobs(file)
        except InvalidJob as exc:
            _print_errors(source, exc.errors)
            status = worst(status, EXIT_INVALID)
            continue
        except OSError as exc:
            print(f"{source}: cannot read: {exc.strerror}", file=sys.stderr)
            status = worst(status, EXIT_UNREADABLE)
            continue
        several = len(loaded) > 1
        for item in loaded:
            if item.errors:
                _print_errors(source, item.errors, item.label() if several else "")
                status = worst(status, EXIT_INVALID)
            elif not _imports_resolve(source, file, item):
                status = worst(status, EXIT_INVALID)
            else:
                valid.append(_as_stored(item, args.namespace))
                print(f"{source}:{item.document.line}: ok: {_summary(item.job)}" if several
                      else f"{source}: ok: {_summary(item.job)}", file=summaries)
                for warning in job_warnings(item.job.spec):  # valid, but probably not what was meant
                    print(f"{source}: warning: {warning}", file=sys.stderr)
    if args.output and valid:
        sys.stdout.write(formatted(valid, args.output))
    return status


def _imports_resolve(source: str, file: str, item) -> bool:
    """Print what rlhf_api.imports finds in the job's code (inline, and path/ConfigMap code found
    beside the job file): errors refuse the job, warnings (a custom cluster.image) do not."""
    from rlhf_api.imports import job_import_findings, local_sources

    job_dir = Path(file).parent if file != "-" else Path.cwd()
    errors, warnings = job_import_findings(item.job.spec, *local_sources(item.job.spec, job_dir))

    def where(finding: str) -> str:  # FILE:LINE of the field the finding starts with (spec.reward.function.inline)
        line = item.document.line_of(tuple(finding.split(":", 1)[0].split(".")))
        return f"{source}:{line}" if line else source
    for finding in warnings:
        print(f"{where(finding)}: warning: {finding}", file=sys.stderr)
    for finding in errors:
        print(f"{where(finding)}: {finding}", file=sys.stderr)
    return not errors


def cmd_render(args: argparse.Namespace) -> int:
    """The objects of every RLHFJob in the file, in order; nothing is printed if any is refused."""
    from rlhf_operator.render import RenderOptions, render
    from rlhf_api.validation import FieldError, InvalidJob, load_jobs
    from rlhf_api.yamlfile import label

    source, job_dir = label(args.file), Path(args.file).parent
    options = RenderOptions(default_image=args.worker_image) if args.worker_image else RenderOptions()
    try:
        loaded = load_jobs(args.file)
        several = len(loaded) > 1
        refused = [item for item in loaded if item.errors]
        for item in refused:
            _print_errors(source, item.errors, item.label() if several else "")
        if refused:
            return EXIT_INVALID
        if args.uid and several:
            raise InvalidJob([FieldError("", "--uid is the uid of one RLHFJob but the file holds"
                                             f" {len(loaded)}; render them one file at a time")])
        configmaps = _configmap_sources(args.configmap, job_dir)
        objects = []
        for item in loaded:
            job = item.job
            if args.namespace:
                job.metadata.namespace = args.namespace
            if args.uid:
                job.metadata.uid = args.uid
            objects += render(job, _resolve_code(job, configmaps, job_dir), options)
    except InvalidJob as exc:
        _print_errors(source, exc.errors)
        return EXIT_INVALID
    except OSError as exc:
        print(f"{exc.filename or source}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    sys.stdout.write(formatted(objects, args.output))
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    """-o yaml|json prints the CRD; any other -o value is a file to write (JSON for *.json),
    the spelling the repository has always used to regenerate crds/."""
    from rlhf_api.crd import crd, crd_yaml

    fmt, target = args.output, None
    if fmt not in FORMATS:
        target, fmt = Path(fmt), "json" if fmt.endswith(".json") else "yaml"
    text = crd_yaml() if fmt == "yaml" else formatted([crd()], "json")
    if target is not None:
        target.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _check_one_job(file: str) -> int:
    """Refuse, the way `rlhf validate` does, a file `rlhf run` cannot take: unreadable, not YAML,
    invalid, or holding several RLHFJobs (the run needs exactly one)."""
    from rlhf_api.validation import InvalidJob, load_job
    from rlhf_api.yamlfile import label

    try:
        load_job(file)
    except InvalidJob as exc:
        _print_errors(label(file), exc.errors)
        return EXIT_INVALID
    except OSError as exc:
        print(f"{label(file)}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    refused = _check_one_job(args.file)
    if refused:
        return refused
    try:
        from rlhf_workers.local import run_local
    except ImportError as exc:
        print(f"rlhf run needs the worker stack ({exc.name} is missing): pip install 'rlhf-operator[cpu]'", file=sys.stderr)
        return 1
    configmaps = {}
    for pair in args.configmap:
        name, _, file = pair.partition("=")
        configmaps[name] = file
    return run_local(args.file, args.output, configmap_files=configmaps or None, max_steps=args.max_steps, quiet=args.quiet)


def _unreadable(*files: str) -> Optional[str]:
    """The first file that cannot be opened, as the line to print."""
    for file in files:
        try:
            open(file, "rb").close()
        except OSError as exc:
            return f"{file}: cannot read: {exc.strerror}"
    return None


def cmd_test_reward(args: argparse.Namespace) -> int:
    problem = _unreadable(args.file, args.data)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        from rlhf_workers.agent_check import is_agent_file, run_agent_check
        from rlhf_workers.reward_check import run_reward_check
    except ImportError as exc:
        print(f"rlhf test-reward needs the worker stack ({exc.name} is missing): pip install 'rlhf-operator[cpu]'", file=sys.stderr)
        return 1
    if is_agent_file(args.file):  # an agent: reset and one step per sample, its response as the action
        return run_agent_check(args.file, args.data, input_key=args.input_key, label_key=args.label_key,
                               response_key=args.response_key, timeout=args.timeout)
    return run_reward_check(args.file, args.data, input_key=args.input_key, label_key=args.label_key,
                            response_key=args.response_key, timeout=args.timeout)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from rlhf_workers.tiny import make_tiny_model

    make_tiny_model(args.directory)
    print(f"wrote a tiny model and tokenizer to {args.directory}")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from rlhf_operator.main import run_operator

    return run_operator(namespaces=args.namespace, all_namespaces=args.all_namespaces, verbose=args.verbose,
                        kubeconfig=args.kubeconfig, context=args.context)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rlhf-operator")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _add_format(p: argparse.ArgumentParser, default: Optional[str], what: str) -> None:
    p.add_argument("-o", "--output", choices=FORMATS, default=default, help=f"print {what} as yaml or json")


def _add_namespace(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-n", "--namespace", help=f"namespace of {what} (default: the job's own)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="RLHF Operator: RLHFJob tools, local runs and the operator.")
    parser.add_argument("--version", action="version", version=f"rlhf {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate every RLHFJob in files ('-' reads standard input)")
    p.add_argument("files", nargs="+", metavar="JOB.yaml")
    _add_format(p, None, "the valid jobs, defaults filled in,")
    _add_namespace(p, "the jobs printed with -o")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the objects the operator would create for every RLHFJob in a file")
    p.add_argument("file", metavar="JOB.yaml", help="the job file; '-' reads standard input")
    p.add_argument("--configmap", action="append", default=[], metavar="NAME=FILE",
                   help="content for a configMapRef: a ConfigMap manifest, or the source file itself")
    _add_namespace(p, "the rendered objects")
    p.add_argument("--uid", help="the RLHFJob's uid, for ownerReferences (known only on a cluster)")
    p.add_argument("--worker-image", help="default worker image when spec.cluster.image is unset")
    _add_format(p, "yaml", "the objects")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("crd", help="print the generated CustomResourceDefinition")
    p.add_argument("-o", "--output", default="yaml", metavar="yaml|json|FILE",
                   help="print as yaml (default) or json; any other value is a file to write (JSON if it ends in .json)")
    p.set_defaults(func=cmd_crd)

    from .convert import add_convert_parser
    add_convert_parser(sub)

    p = sub.add_parser("run", help="run a job locally on an embedded Ray")
    p.add_argument("file", metavar="JOB.yaml", help="a file with one RLHFJob; '-' reads standard input")
    p.add_argument("--output", "-o", default="out", help="directory for metrics, checkpoints and the final model")
    p.add_argument("--configmap", action="append", default=[], metavar="NAME=FILE", help="local file for a configMapRef")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from rlhf_workers.local import CleanupAction  # light: the worker stack loads only when a job runs
    p.add_argument("--cleanup", action=CleanupAction, help="stop the Ray processes of killed runs, and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("test-reward", help="run a reward_func (or agent) file on samples and check its contract")
    p.add_argument("file", metavar="FILE.py")
    p.add_argument("--data", required=True, metavar="SAMPLES.jsonl")
    p.add_argument("--input-key", default=None, help="prompt field (default: prompt or input)")
    p.add_argument("--label-key", default=None, help="label field passed as labels")
    p.add_argument("--response-key", default=None, help="response field (default: response or output)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="seconds the reward may take to load, and to score the samples (default 60); past them the "
                        "sandboxed reward is killed and the check fails")
    p.set_defaults(func=cmd_test_reward)

    p = sub.add_parser("tiny-model", help="write a tiny random-init model and byte-level tokenizer")
    p.add_argument("directory")
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("operator", help="run the operator")
    p.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    p.add_argument("--all-namespaces", "-A", action="store_true", help="watch all namespaces (default unless -n or RLHF_NAMESPACES)")
    p.add_argument("--kubeconfig", metavar="FILE", help="the cluster's kubeconfig (default: in-cluster, else $KUBECONFIG"
                   " or ~/.kube/config; RLHF_KUBECONFIG)")
    p.add_argument("--context", metavar="NAME", help="the kubeconfig context to use (default: its current one)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_operator)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
