"""``raymeta tune`` on a local Ray instance with a tiny model: search, outputs, failure retry,
resume."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from raymeta.config import load_config
from raymeta.train.trainer import train
from raymeta.tune.search import run_tune
from raymeta.tune.space import WEIGHT_PREFIX

from .conftest import tiny_config, write_config


@pytest.fixture(scope="module")
def tune_data(tmp_path_factory):
    """Two meta-training classification tasks of different sizes and class-disjoint val/test
    tasks."""
    d = tmp_path_factory.mktemp("tune")

    def csv(name: str, topics: list[str], n: int) -> None:
        rows = ["text,label"] + [f"a line about {t} and item {i} of {n},{t}" for i in range(n)
                                 for t in topics]
        (d / name).write_text("\n".join(rows) + "\n")

    csv("big.csv", ["sport", "music", "travel", "food"], 24)
    csv("small.csv", ["cars", "boats", "planes"], 8)
    csv("val.csv", ["rain", "snow", "wind", "sun"], 8)
    csv("test.csv", ["cats", "dogs", "birds", "fish"], 8)
    return d


def tune_config(tmp_path: Path, d: Path, **tune) -> dict:
    # data_dir relative to the directory tune starts in, as users write it (../shared/data): trials
    # must read there
    data = tiny_config(tmp_path, Path(os.path.relpath(d)))

    def task(name: str, file: str, **kw) -> dict:
        return {"name": name, "type": "sequence_classification", "max_length": 24,
                "source": {"kind": "files", "format": "csv",
                           "files": {"train": f"${{data_dir}}/{file}"}}, **kw}

    data["tasks"] = [task("big", "big.csv"), task("small", "small.csv")]
    data["meta"].update({"steps": 4, "algorithm": "protonet"})
    data["resources"] = {"num_cpus_per_actor": 0.25}
    data["tune"] = {"num_samples": 4, "eval_every": 2, "ways": 3, "shots": 2, "queries": 2,
                    "episodes": 10,
                    "max_rows_per_class": 6, "driver_cpus": 0.25, "grace_period": 1,
                    "storage_path": str(tmp_path / "tune_results"),
                    "space": {"weights": True, "lr": [1e-4, 1e-2]},
                    "validation_tasks": [task("val", "val.csv")], "test_tasks": [task("test",
                                                                                      "test.csv")],
                    **tune}
    return data


def one_task(data: dict) -> dict:
    """A search over one meta-training task (the learning rate only): for the tests of how trials
    fail, stop and resume, where a mixture is not the point and every task is one more actor to
    start per trial."""
    data["tasks"] = data["tasks"][:1]
    data["tune"]["space"] = {"weights": False, "lr": data["tune"]["space"]["lr"]}
    return data


@pytest.mark.slow  # 50 s: a search end to end; the tier CI runs after make test
def test_tiny_tune_finds_a_best_config_that_trains(ray_local, tune_data, tmp_path):
    t0 = time.time()
    cfg = load_config(data=tune_config(tmp_path, tune_data))
    summary = run_tune(cfg)
    out = Path(cfg.output_dir)
    trials = summary["trials"]
    assert len(trials) == 4 and not any(t["error"] for t in trials)
    # the three heuristics were seeded as trials, with the mixtures their rules give (sizes 96 and
    # 24)
    mixes = {t["heuristic"]: t["mixture"] for t in trials if t["heuristic"]}
    assert set(mixes) == {"equal", "proportional", "temperature2"}
    assert mixes["equal"]["big"] == pytest.approx(0.5)
    assert mixes["proportional"]["big"] == pytest.approx(96 / 120)
    assert mixes["temperature2"]["big"] == pytest.approx(96**0.5 / (96**0.5 + 24**0.5))
    # Four trials, at most two at a time (two placement groups fit): a later trial ran in a finished
    # one's process and reset its task actors (tune.reuse_actors) instead of starting new ones
    print("reused_actors:", [t["reused_actors"] for t in trials])
    assert any(t["reused_actors"] for t in trials)
    best = max((t for t in trials if t["reports"]), key=lambda t: t["val_score"])
    assert summary["best"]["trial"] == best["trial"]
    # validation only during the search; meta-test scored after it, for every compared init
    assert all("test" in r and 0.0 <= r["test"] <= 1.0 for r in summary["compare"].values())
    assert (out / "tune_scores.png").stat().st_size > 1000
    # TensorBoard event files per trial, with the validation score among their tags
    events = list(Path(cfg.tune.storage_path).rglob("run/tensorboard/events.out.tfevents.*"))
    assert len(events) >= 4
    # the best checkpoint as a Hugging Face directory
    from transformers import AutoModel

    AutoModel.from_pretrained(out / "best_model")
    # best_config.yaml: the best trial's mixture and lr, ready for raymeta train
    best_cfg = load_config(out / "best_config.yaml", ["meta.steps=2",
                                                      f"output_dir={tmp_path / 'again'}"])
    w = {t.name: t.weight for t in best_cfg.tasks}
    assert w == pytest.approx(best["mixture"])
    assert best_cfg.optim.lr == pytest.approx(best["params"]["lr"])
    assert (train(best_cfg) / "config.json").is_file()
    print(f"tiny tune + retrain: {time.time() - t0:.1f} s")


def _kill_a_task_actor_after_a_report(storage: Path, killed: list[int]) -> None:
    """SIGKILL one task actor of this Ray instance once the trial has reported a checkpoint."""
    import ray

    end = time.time() + 90
    while time.time() < end and not list(storage.rglob("checkpoint_000000")):
        time.sleep(0.2)
    # the GCS actor table (the state API needs the dashboard, which the local instance does not run)
    alive = [a for a in ray._private.state.actors().values()
             if a["ActorClassName"] == "TaskActor" and a["State"] == "ALIVE" and a["Pid"]]
    for a in alive[:1]:
        os.kill(a["Pid"], signal.SIGKILL)
        killed.append(a["Pid"])


@pytest.mark.slow  # 50 s: the tier CI runs after make test (make test-slow)
def test_search_retries_a_trial_whose_actor_dies_and_resumes_after_ctrl_c(ray_local, tune_data, cli,
                                                                          tmp_path):
    """`raymeta tune`, a process of its own that joins this test's Ray instance (`--address`), as on
    a cluster. Two faults in the first of two trials: its task actor is SIGKILLed once it has
    reported a checkpoint (Tune retries the trial from that checkpoint), and Ctrl-C comes once the
    retried trial has reported again (Tune saves the experiment and stops). Then `raymeta tune
    --resume` finishes the search."""
    data = one_task(tune_config(tmp_path, tune_data, num_samples=2, scheduler="fifo",
                                max_concurrent_trials=1,
                                test_tasks=[]))
    data["meta"]["steps"] = 6
    cmd = ["tune", "--config", write_config(tmp_path, data), "--address",
           ray_local.get_runtime_context().gcs_address]
    storage = Path(data["tune"]["storage_path"])
    killed: list[int] = []
    proc = cli.start(cmd, cwd=Path.cwd())
    try:
        _kill_a_task_actor_after_a_report(storage, killed)
        assert killed, "no task actor was killed: " + proc.stderr.read_text()[-3000:]
        # one trial at a time: a second checkpoint directory is the retried trial's next report
        end = time.time() + 120
        while (time.time() < end and len(list(storage.rglob("checkpoint_0*"))) < 2
               and cli.poll(proc) is None):
            time.sleep(0.2)
        assert cli.poll(proc) is None, proc.stderr.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        first = cli.finish(proc, timeout=60)
    finally:
        cli.kill(proc)
    assert first.returncode != 0, first.stderr[-3000:]
    assert not (Path(data["output_dir"]) / "best_config.yaml").exists()
    again = cli.run(cmd + ["--resume"], cwd=Path.cwd(), timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trials = json.loads((Path(data["output_dir"]) / "tune_summary.json").read_text())["trials"]
    assert len(trials) == 2 and all(t["error"] is None and t["reports"] == 3
                                    and t["last_step"] == 6 for t in trials)
    # The first trial went back to a reported checkpoint (step 2 or 4) after each fault: it never
    # started over. The second one started only on --resume.
    second, first = sorted(t["resumed_at"] for t in trials)
    assert second == 0 and first in (2, 4)
    for t in trials:
        trial_dir = next(storage.rglob(t["trial"]))
        steps = [json.loads(x)["step"]
                 for x in (trial_dir / "run" / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(6)), f"{t['trial']}: a meta-step was skipped or logged twice"
    assert yaml.safe_load((Path(data["output_dir"]) / "best_config.yaml").read_text())["tasks"]


def test_tune_config_errors_are_one_line(tmp_path, tune_data):
    from raymeta.errors import ConfigError
    from raymeta.tune.search import check_tune_config

    data = tune_config(tmp_path, tune_data)
    data["tune"]["validation_tasks"] = []
    with pytest.raises(ConfigError, match="tune.validation_tasks"):
        check_tune_config(load_config(data=data))
    data = tune_config(tmp_path, tune_data)
    data["tune"]["test_tasks"] = data["tune"]["validation_tasks"]
    with pytest.raises(ConfigError, match="also a meta-validation task"):
        check_tune_config(load_config(data=data))
    with pytest.raises(ConfigError, match="tune.space"):
        load_config(data={**tune_config(tmp_path, tune_data),
                          "tune": {"space": {"lr": [1e-2, 1e-4]}}})
    assert WEIGHT_PREFIX == "logw_"


# four trials plus the clones' restarts: minutes on 2 CPUs (passed: `pytest -m slow -k pbt`)
@pytest.mark.slow
def test_pbt_clones_and_perturbs_trials_through_checkpoints(ray_local, tune_data, tmp_path):
    """PBT: the bottom trials restart from a top trial's checkpoint with perturbed mixture and
    lr."""
    data = tune_config(tmp_path, tune_data, num_samples=4, scheduler="pbt", search="random",
                       test_tasks=[],
                       heuristics=["equal"], episodes=30)
    # scores that differ
    data["tune"]["validation_tasks"][0]["source"]["files"]["train"] = "${data_dir}/big.csv"
    cfg = load_config(data=data)
    summary = run_tune(cfg)
    trials = summary["trials"]
    assert len(trials) == 4 and all(t["error"] is None and t["last_step"] == 4 for t in trials)
    exploited = [t for t in trials if t["resumed_at"]]
    assert exploited, "PBT never restored a trial from a checkpoint"


def test_a_trial_that_can_never_fit_is_an_error_not_a_pending_trial(ray_local, tune_data, tmp_path):
    from raymeta.errors import RaymetaError
    from raymeta.tune.search import _trial_resources

    cfg = load_config(data=tune_config(tmp_path, tune_data, driver_cpus=8))
    with pytest.raises(RaymetaError, match=r"one trial needs CPU=8\.5 \(driver \+ 2 task actors\)"):
        _trial_resources(cfg, local=True)
    pgf = _trial_resources(load_config(data=tune_config(tmp_path, tune_data)), local=True)
    assert pgf.bundles == [{"CPU": 0.25}, {"CPU": 0.25}, {"CPU": 0.25}]


@pytest.mark.slow  # two tiny trials: about a minute on 2 CPUs
def test_a_search_ranked_on_held_out_classes_never_trains_on_them(ray_local, tune_data, tmp_path):
    """No tune.validation_tasks: eval.validation.holdout_classes gives them, split once for every
    trial, with the episodes' ways searched."""
    data = one_task(tune_config(tmp_path, tune_data, num_samples=2, validation_tasks=[],
                                test_tasks=[], ways=2))
    data["tune"]["space"]["ways"] = [2]
    data["meta"]["episode"] = {"ways": 2, "shots": 2, "queries": 2}
    data.setdefault("eval", {})["validation"] = {"holdout_classes": 0.5, "ways": 2, "shots": 1,
                                                 "queries": 2, "episodes": 5,
                                                 "every_steps": 1000}
    cfg = load_config(data=data)
    summary = run_tune(cfg)
    out = Path(cfg.output_dir)
    split = json.loads((out / "holdout_classes.json").read_text())["tasks"]["big"]
    assert len(split["held"]) == 2 and not set(split["held"]) & set(split["kept"])
    assert all(t["error"] is None and t["reports"] for t in summary["trials"])
    # the resolved config: the same split, the held classes validate
    best = load_config(out / "best_config.yaml")
    assert (best.task("big").include_labels == split["kept"]
            and best.eval.validation.holdout_classes is None)
    assert [t["include_labels"] for t in best.tune.validation_tasks] == [split["held"]]
    # every trial was ranked on the held-out task, and meta-trained on the kept classes
    for t in summary["trials"]:
        trial_dir = next(Path(cfg.tune.storage_path).rglob(t["trial"]))
        assert "val/big_holdout" in (trial_dir / "result.json").read_text()
        assert (load_config(trial_dir / "run" / "config.yaml").task("big").include_labels
                == split["kept"])
