"""The console script: real processes (forked from one that has done the imports:
``tests/cli_forks.py``), exit codes, one-line errors with no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..cli_forks import CliForks


@pytest.fixture(scope="module")
def raymeta(cli: CliForks):
    """``raymeta(*args, cwd=None)``: one ``raymeta`` command line in a process of its own."""
    return lambda *args, cwd=None: cli.run(list(args), cwd=Path(cwd or os.getcwd()), timeout=120)


def test_tasks_list_names_every_ready_made_task(raymeta):
    from raymeta.tasks import catalog_names

    r = raymeta("tasks", "list")
    assert r.returncode == 0, r.stderr
    for name in catalog_names():
        assert name in r.stdout


def test_tasks_show_prints_labels_lengths_and_episode(raymeta):
    r = raymeta("tasks", "show", "bbc_news")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("sequence_classification", "built-in bbc_news",
                   "labels  5: business, entertainment, politics",
                   "tokens mean", "episode seed=0 step=0: 5-way, 25 support"):
        assert needle in out, needle


@pytest.mark.parametrize(
    "args, expect",
    [
        (("tasks", "show", "no_such_task"), "task 'no_such_task': not a ready-made task"),
        (("tasks", "show", "--config", "missing.yaml"), "config file missing.yaml: not found"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "setfit", "--episodic"),
         "--method setfit scores K-shot splits; --episodic scores N-way K-shot episodes"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--setfit-epochs", "2"),
         "--setfit-epochs applies to --method setfit only"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "setfit", "--setfit-lr",
          "0"),
         "--setfit-lr must be positive, got 0.0"),
        (("evaluate", "--init", "x", "--task", "wnut17", "--method", "prototype"),
         "task 'wnut17': --method prototype needs a sequence_classification task; the task is "
         "token_classification"),
        (("evaluate", "--init", "x", "--task", "wnut17", "--method", "svm"),
         "task 'wnut17': --method svm needs a sequence_classification task; the task is "
         "token_classification"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "ridge", "--ridge-lambda",
          "-1"),
         "--ridge-lambda must be positive, got -1.0"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "ridge", "--svm-iterations",
          "5"),
         "--svm-iterations applies to --method svm only"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--fastfit-epochs", "5"),
         "--fastfit-epochs applies to --method fastfit only"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "fastfit",
          "--fastfit-epochs", "0"),
         "--fastfit-epochs must be positive, got 0"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "prototype,lasso"),
         "--method prototype,lasso: expected one or more of finetune, prototype, ridge, svm, "
         "setfit"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "ridge,finetune",
          "--episodic"),
         "--method finetune scores K-shot splits; --episodic scores N-way K-shot episodes with "
         "prototype, ridge, svm"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "prototype", "--shots",
          "0,4"),
         "--shots 0 (zero-shot) needs --label-prior WEIGHT (> 0): the label names are the "
         "prototypes"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--shots", "0", "--label-prior", "1"),
         "--label-prior applies to --method prototype"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "prototype,ridge", "--shots",
          "0",
          "--label-prior", "1"), "--shots 0 (zero-shot): --method ridge needs examples"),
        (("evaluate", "--init", "x", "--task", "bbc_news", "--method", "prototype", "--label-prior",
          "1",
          "--label-template", "about"), "--label-template 'about': must contain {name}"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, expect, raymeta):
    r = raymeta(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert (lines == [f"raymeta: error: {lines[0].removeprefix('raymeta: error: ')}"]
            and expect in lines[0])


def test_bad_row_from_task_yaml(tmp_path, raymeta):
    (tmp_path / "d.csv").write_text("text,label\nfine,a\nalso fine,b\nbad,zzz\n")
    (tmp_path / "t.yaml").write_text(
        "name: mine\ntype: sequence_classification\nlabels: [a, b]\n"
        f"source: {{kind: files, format: csv, files: {{train: {tmp_path}/d.csv}}}}\n"
    )
    r = raymeta("tasks", "show", str(tmp_path / "t.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (f"task 'mine', file {tmp_path}/d.csv, row 3: label 'zzz' is not in the label set"
            in r.stderr)


@pytest.mark.parametrize("content, expect", [
    ("text,label\nfine,a\nbad,b,extra\nok,a\n",
     "d.csv, row 2: 3 fields, the header has 2 (line 3 of the file"),
    ("", "d.csv: the file is empty: no header, no rows"),
], ids=["ragged", "empty"])
def test_unreadable_csv_from_task_yaml_is_one_line(content, expect, tmp_path, raymeta):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.csv").write_text(content)
    (tmp_path / "t.yaml").write_text("name: mine\ntype: sequence_classification\n"
                                     "source: {kind: files, format: csv, files: {train: "
                                     "data/d.csv}}\n")
    # run elsewhere: data/d.csv is next to t.yaml
    r = raymeta("tasks", "show", str(tmp_path / "t.yaml"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines == [f"raymeta: error: task 'mine', file {tmp_path}/data/{expect}"
                     + lines[0].split(expect, 1)[-1]], r.stderr


def test_speed_and_benchmark_are_listed_apart(raymeta):
    r = raymeta("--help")
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split("positional arguments:")[1].split("options:")[0]
    commands = [ln.split()[0] for ln in listed.splitlines() if ln.startswith("    ")
                and not ln.startswith("     ")]
    assert "speed" in commands and "benchmark" in commands
    assert "bench" not in commands  # the deprecated name is accepted, not advertised


@pytest.mark.parametrize("argv", [("bench", "--help"), ("-v", "bench", "--help")])
def test_bench_is_a_deprecated_alias_of_speed(argv, raymeta):
    r = raymeta(*argv)
    assert r.returncode == 0, r.stderr
    # the same flags as `speed`
    assert r.stdout.startswith("usage: raymeta speed ") and "--ddp-tasks" in r.stdout
    assert r.stderr.splitlines() == ["raymeta: warning: `raymeta bench` is deprecated and will be "
                                     "removed in the next release; use `raymeta speed`"]


def test_speed_itself_does_not_warn(raymeta):
    r = raymeta("speed", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: raymeta speed ") and r.stderr == ""


def test_version(raymeta):
    from raymeta import __version__

    r = raymeta("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"raymeta {__version__}", r.stdout + r.stderr


def test_evaluate_defaults_are_the_config_schemas_and_help_shows_them(raymeta):
    from raymeta.cli import build_parser
    from raymeta.config import EvalConfig

    schema = EvalConfig()
    args = build_parser().parse_args(["evaluate", "--init", "x", "--task", "bbc_news"])
    assert (args.splits, args.episodes, args.steps, args.lr, args.head_lr, args.batch_size,
            args.max_test) == \
        (schema.splits, schema.episodes, schema.finetune_steps, schema.finetune_lr, schema.head_lr,
         schema.batch_size,
         schema.max_test_examples)
    assert (args.ways, args.queries, args.head_steps, args.shots) == \
        (schema.ways, schema.queries, schema.head_steps, ",".join(map(str, schema.shots)))
    r = raymeta("evaluate", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert f"seeded K-shot splits per K (default: {schema.splits})" in text
    assert f"episodic: seeded episodes per task and K (default: {schema.episodes})" in text
    assert ("--address ADDRESS Ray cluster address for the K-shot runs (default: $RAY_ADDRESS"
            in text)
    # no default to show: none shown
    assert "(default: None)" not in text and "(default: False)" not in text


def test_tasks_show_a_k_shot_task_too_small_for_meta_training_episodes(tmp_path, raymeta):
    """A labelled task with 3 rows a class is a fine K-shot evaluation task: shown, with why it has
    no episode."""
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"row {i},{'abc'[i % 3]}\n"
                                                             for i in range(9)))
    (tmp_path / "t.yaml").write_text("name: few\ntype: sequence_classification\n"
                                     "source: {kind: files, format: csv, files: {train: d.csv}}\n")
    r = raymeta("tasks", "show", str(tmp_path / "t.yaml"))
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert ("labels 3: a, b, c" in out
            and "episode none at ways=5 shots=5 queries=5: task 'few'" in out)
    assert "(enough for K-shot evaluation; not for meta-training with these episodes)" in out


def _run_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_config_show_prints_the_resolved_config_as_a_run_saves_it(tmp_path, raymeta):
    """Every default filled in, secrets redacted: the text of save_config's config.yaml."""
    import yaml

    from raymeta.config import ExperimentConfig, config_yaml, load_config, save_config

    secret = "hf_" + "a" * 30
    overrides = ["meta.steps=7", f"model.from_config.hf_token={secret}"]
    r = raymeta("config", "show", "--config", "tiny", *overrides)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    cfg = load_config("tiny", overrides)
    assert r.stdout == config_yaml(cfg) == save_config(cfg, tmp_path).read_text()
    assert secret not in r.stdout and "hf_token: '***'" in r.stdout
    assert "meta:\n  algorithm: fomaml\n" in r.stdout and "  steps: 7\n" in r.stdout
    # every section, defaults included, and the text reloads as the same config
    shown = yaml.safe_load(r.stdout)
    assert (set(shown) == set(ExperimentConfig.model_fields)
            and ExperimentConfig.model_validate(shown).meta == cfg.meta)
    # without --config: the schema's defaults
    r = raymeta("config", "show")
    assert r.returncode == 0 and r.stdout == config_yaml(ExperimentConfig()), r.stderr


def test_train_dry_run_checks_and_prints_the_config_and_starts_nothing(tmp_path, raymeta):
    from raymeta.config import config_yaml, load_config
    from raymeta.config.resolve import resolve

    out = tmp_path / "run"
    overrides = [f"output_dir={out}", "meta.steps=3"]
    r = raymeta("train", "--config", "tiny", "--dry-run", *overrides)
    assert r.returncode == 0, r.stderr
    # the config the run would save as its config.yaml; on stderr one line, and no Ray
    assert r.stdout == config_yaml(resolve(load_config("tiny", overrides)).cfg)
    assert r.stderr.splitlines() == ["raymeta train --dry-run: the config, output_dir and the "
                                     "tasks' data checked; Ray not started, nothing trained"]
    assert not out.exists()  # nothing written


def test_train_dry_run_refuses_what_train_refuses_and_removes_nothing(tmp_path, raymeta):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    before = _run_files(out)
    r = raymeta("train", "--config", "tiny", "--dry-run", f"output_dir={out}")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"raymeta: error: output_dir {out} already holds a run (metrics.jsonl, checkpoints): add "
        "--resume to continue it, or --overwrite to start it over"], r.stderr
    r = raymeta("train", "--config", "tiny", "--dry-run", "--overwrite", f"output_dir={out}")
    assert r.returncode == 0, r.stderr
    assert _run_files(out) == before
    # a bad row: the one-line error train gives before Ray starts
    (tmp_path / "d.csv").write_text("text,label\nfine,a\nalso fine,b\nbad,zzz\n")
    (tmp_path / "c.yaml").write_text(
        f"output_dir: {tmp_path}/other\ntasks:\n  - name: mine\n    type: sequence_classification"
        f"\n    labels: [a, b]\n    source: {{kind: files, format: csv, files: {{train: "
        f"{tmp_path}/d.csv}}}}\n")
    r = raymeta("train", "--config", str(tmp_path / "c.yaml"), "--dry-run")
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(
        f"raymeta: error: task 'mine', file {tmp_path}/d.csv, row 3: label 'zzz' is not in the "
        "label set"), r.stderr
    assert not (tmp_path / "other").exists()


def test_train_ends_by_naming_the_next_commands():
    """After `raymeta train`: the paired comparison of the model the run started from with the
    one it made, on the config's test tasks, and the dashboard."""
    from raymeta.cli import _next_commands
    from raymeta.config import load_config

    cfg = load_config("starter", ["output_dir=runs/x"])
    text = _next_commands(cfg, "runs/x/best")
    assert ("raymeta evaluate --init offline:all-MiniLM-L6-v2 --init runs/x/best "
            "--task chatterbot_topics --output runs/x/compare.json") in text
    assert "tensorboard --logdir runs/x/tensorboard" in text
    assert "--task YOUR_TASK.yaml" in _next_commands(cfg.model_copy(
        update={"eval": cfg.eval.model_copy(update={"tasks": []})}), "runs/x/final")


def test_every_argument_of_every_command_has_help():
    import argparse

    from raymeta.cli import build_parser

    def walk(parser: argparse.ArgumentParser, name: str) -> list[str]:
        out = []
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, p in a.choices.items():
                    out += walk(p, f"{name} {sub}".strip())
            elif not isinstance(a, argparse._HelpAction) and not a.help:
                out.append(f"{name}: {a.dest}")
        return out

    assert walk(build_parser(), "") == []
