"""Job files read the way kubectl reads them, and hostile input refused with one line.

Most cases call the CLI in-process (``main``) for speed; stdin is replaced by a byte stream.
"""

import io
import sys
import time
import tracemalloc

import pytest
import yaml

from rlhf_api import yamlfile
from rlhf_api.validation import InvalidJob, load_job, load_jobs
from rlhf_api.yamlfile import MAX_ALIAS_NODES, YAMLInputError, parse_stream
from rlhf_cli.cli import main
from support.jobs import job

JOB_TEXT = """\
apiVersion: rlhf.dev/v1alpha1
kind: RLHFJob
metadata:
  name: demo
spec:
  model:
    path: /models/tiny
  data:
    prompts: /data/prompts.jsonl
  reward:
    function:
      inline: |
        def reward_func(queries, prompts, labels):
            return {'rewards': [0.0] * len(queries)}
  training:
    learningRate: 1e-6
"""

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.fixture(autouse=True)
def _fresh_stdin_cache():
    yamlfile._stdin_cache.clear()
    yield
    yamlfile._stdin_cache.clear()


def feed_stdin(monkeypatch, data: str | bytes):
    raw = data.encode() if isinstance(data, str) else data
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    # Warnings about valid jobs (rlhf_api.advice: checkpoints off a PVC) are not the error under test.
    lines = [line for line in err.strip().splitlines() if ": warning: " not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "<unicode string>" not in err
    return lines[0]


# --- scalars: kubectl's rules, not YAML 1.1's --------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("1e-6", 1e-6), ("1.0e6", 1e6), ("1E+3", 1e3), ("-2.5e-3", -2.5e-3), (".5", 0.5), ("3.", 3.0),
    ("7", 7), ("-3", -3), ("0x1F", 31), ("0o17", 15), ("1_000", 1000),
    ("1e", "1e"), ("1:20", "1:20"), ("2024-01-01", "2024-01-01"), ("v1.2", "v1.2"),
    ("true", True), ("null", None), ("'1e-6'", "1e-6"),
])
def test_scalars_resolve_as_kubectl_reads_them(text, value):
    (document,) = parse_stream(f"x: {text}\n")
    assert document.data["x"] == value and type(document.data["x"]) is type(value)


def test_learning_rate_in_exponent_form_validates(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(JOB_TEXT)
    code, out, err = run_cli(capsys, "validate", path)
    assert code == 0, err
    assert load_job(path).spec.training.learning_rate == 1e-6


# --- duplicate keys -----------------------------------------------------------------------------

def test_duplicate_key_is_refused_naming_key_and_line(monkeypatch, capsys):
    feed_stdin(monkeypatch, "a: 1\na: 2\n")
    code, _, err = run_cli(capsys, "validate", "-")
    assert code == 2
    assert one_line(err) == "<stdin>:2: duplicate key 'a' (first at line 1); keep one of them"


def test_duplicate_key_inside_a_job_and_in_flow_style(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(JOB_TEXT.replace("    path: /models/tiny\n", "    path: /models/tiny\n    path: /models/other\n"))
    code, _, err = run_cli(capsys, "validate", path)
    assert code == 2 and one_line(err).startswith(f"{path}:8: duplicate key 'path' (first at line 7)")
    with pytest.raises(YAMLInputError, match="duplicate key 'a'"):
        parse_stream("{a: 1, b: 2, a: 3}")


def test_merge_keys_may_be_overridden():
    (document,) = parse_stream("base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  a: 3\n")
    assert document.data["x"] == {"a": 3, "b": 2}


# --- several documents --------------------------------------------------------------------------

def two_jobs(second_change=("learningRate: 1e-6", "learningRate: 7")):
    second = JOB_TEXT.replace("name: demo", "name: demo-b").replace(*second_change)
    return JOB_TEXT + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n---\n" + second


def test_every_job_of_a_stream_is_validated_and_the_bad_one_named(tmp_path, capsys):
    path = tmp_path / "jobs.yaml"
    path.write_text(two_jobs())
    code, out, err = run_cli(capsys, "validate", path)
    assert code == 2
    assert out.startswith(f"{path}:1: ok: demo: valid RLHFJob")
    line = JOB_TEXT.count("\n") + 5 + JOB_TEXT.splitlines().index("    learningRate: 1e-6") + 1
    assert one_line(err).startswith(f"{path}:{line}: document 3 (demo-b): spec.training.learningRate: ")


def test_a_stream_of_valid_jobs_passes_and_a_misspelt_kind_is_not_skipped(tmp_path, capsys):
    path = tmp_path / "jobs.yaml"
    path.write_text(two_jobs(("learningRate: 1e-6", "learningRate: 2e-6")))
    code, out, _ = run_cli(capsys, "validate", path)
    assert code == 0 and len(out.strip().splitlines()) == 2
    path.write_text(two_jobs(("kind: RLHFJob", "kind: RLHFjob")))
    code, _, err = run_cli(capsys, "validate", path)
    assert code == 2 and "document 3 (demo-b): kind: must be RLHFJob" in one_line(err)


def test_a_stream_without_any_job_is_refused(monkeypatch, capsys):
    feed_stdin(monkeypatch, "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nkind: Secret\n")
    code, _, err = run_cli(capsys, "validate", "-")
    assert code == 2 and one_line(err) == "<stdin>: holds no RLHFJob (2 other document(s))"


def test_render_renders_every_job_and_refuses_one_uid_for_several(tmp_path, capsys):
    path = tmp_path / "jobs.yaml"
    path.write_text(two_jobs(("learningRate: 1e-6", "learningRate: 2e-6")))
    code, out, err = run_cli(capsys, "render", path)
    assert code == 0, err
    rayjobs = [o["metadata"]["name"] for o in yaml.safe_load_all(out) if o["kind"] == "RayJob"]
    assert rayjobs == ["demo", "demo-b"]
    code, out, err = run_cli(capsys, "render", path, "--uid", "abc")
    assert code == 2 and out == "" and "--uid is the uid of one RLHFJob but the file holds 2" in one_line(err)


def test_run_needs_exactly_one_job_and_says_how_many_it_found(tmp_path, capsys):
    path = tmp_path / "jobs.yaml"
    path.write_text(two_jobs(("learningRate: 1e-6", "learningRate: 2e-6")))
    code, _, err = run_cli(capsys, "run", path, "--output", tmp_path / "out")
    assert code == 2
    assert one_line(err) == (f"{path}: holds 2 RLHFJob documents (demo at line 1, demo-b at line 22);"
                             " this command takes one: put each in its own file")
    assert not (tmp_path / "out").exists()
    assert load_job(path, name="demo-b").metadata.name == "demo-b"


# --- standard input -----------------------------------------------------------------------------

def test_dash_reads_standard_input(monkeypatch, capsys):
    feed_stdin(monkeypatch, JOB_TEXT)
    code, out, err = run_cli(capsys, "validate", "-")
    assert code == 0, err
    assert out.startswith("<stdin>: ok: demo: valid RLHFJob")


def test_standard_input_is_read_once_for_a_check_and_the_run_after_it(monkeypatch):
    feed_stdin(monkeypatch, JOB_TEXT)
    assert load_job("-").metadata.name == "demo"
    assert load_job("-").metadata.name == "demo"  # rlhf run checks, then run_local loads again


def test_render_reads_standard_input(monkeypatch, capsys):
    feed_stdin(monkeypatch, yaml.safe_dump(job()))
    code, out, err = run_cli(capsys, "render", "-")
    assert code == 0, err
    assert [o["kind"] for o in yaml.safe_load_all(out)] == ["ConfigMap", "RayJob"]


# --- hostile input: one line, fast, bounded ----------------------------------------------------

def test_alias_bomb_is_refused_fast_with_bounded_memory(monkeypatch, capsys):
    text = JOB_TEXT.replace("  name: demo\n", "  name: demo\n  labels:\n" + "".join(
        f"    {line}\n" for line in BOMB.splitlines()) + "  extra: *i\n")
    feed_stdin(monkeypatch, text)
    tracemalloc.start()
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "validate", "-")
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 2
    assert f"(at most {MAX_ALIAS_NODES}); write the values out or use fewer aliases" in one_line(err)
    assert elapsed < 1.0 and peak < 20 * 1024 * 1024, (elapsed, peak)


def test_modest_aliases_and_long_files_without_aliases_are_still_allowed():
    (document,) = parse_stream("a: &a {x: 1}\nb: *a\nc: [*a, *a]\n")
    assert document.data["c"] == [{"x": 1}, {"x": 1}]
    (document,) = parse_stream("".join(f"- [{i}, {i}]\n" for i in range(2 * MAX_ALIAS_NODES // 3)))
    assert len(document.data) == 2 * MAX_ALIAS_NODES // 3


@pytest.mark.parametrize("raw, expected", [
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "is a binary file, not YAML (a NUL byte at offset 7)"),
    (b"a: 1\nb: caf\xe9\n", ":2: is not UTF-8 text (byte 0xe9 at offset 11)"),
    (b"a: 1\nb: \x07\n", ":2: is not valid YAML: control characters are not allowed (#x0007)"),
    (b"a: &a [*a]\n", ":1: has an alias inside its own anchor"),
    (b"a: " + b"[" * 300 + b"]" * 300 + b"\n", ":1: nests deeper than 200 levels"),
    (b"a: !!python/object:os.system x\n", ":1: is not valid YAML: could not determine a constructor"),
])
def test_hostile_input_gives_one_line_naming_the_file(tmp_path, capsys, raw, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(raw)
    code, _, err = run_cli(capsys, "validate", path)
    line = one_line(err)
    assert code == 2 and line.startswith(str(path)) and expected in line
    assert line.count(str(path)) == 1


def test_oversized_input_is_refused_before_parsing(monkeypatch, capsys):
    feed_stdin(monkeypatch, b"a" * (yamlfile.MAX_BYTES + 10))
    code, _, err = run_cli(capsys, "validate", "-")
    assert code == 2 and "is larger than 16 MiB" in one_line(err)


def test_broken_yaml_names_the_file_and_line_once(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("spec:\n  model: [unclosed\n")
    code, _, err = run_cli(capsys, "validate", path)
    assert code == 2
    assert one_line(err) == (f"{path}:3: is not valid YAML: did not find expected ',' or ']'"
                             " (parsing a flow sequence at line 2)")


def test_field_errors_name_the_line_of_the_field(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(JOB_TEXT.replace("learningRate: 1e-6", "learningRate: fast"))
    code, _, err = run_cli(capsys, "validate", path)
    assert code == 2
    assert one_line(err).startswith(f"{path}:16: spec.training.learningRate: must be a number")
    (loaded,) = load_jobs(path)
    assert [e.line for e in loaded.errors] == [16]


def test_a_missing_field_names_the_line_of_its_parent(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB_TEXT.replace("    prompts: /data/prompts.jsonl\n", "    labelKey: answer\n"))
    with pytest.raises(InvalidJob) as caught:
        load_job(path)
    assert [(e.path, e.line) for e in caught.value.errors] == [("spec.data.prompts", 8)]
