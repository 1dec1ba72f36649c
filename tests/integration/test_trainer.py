"""The distributed meta-trainer on a local Ray instance: exactness against a single-process
reference for every algorithm (and PCGrad), determinism, checkpoints and resume."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from raymeta.config import ExperimentConfig, load_config
from raymeta.config.resolve import replica_key
from raymeta.core.algorithms import ALGORITHMS, algorithm_options, task_gradient
from raymeta.core.checkpoint import latest_checkpoint
from raymeta.core.model import load_tokenizer
from raymeta.core.seeds import step_seed
from raymeta.tasks import load_task
from raymeta.train.actor import build_task_model
from raymeta.train.trainer import MetaTrainer, train

from .conftest import algorithm_meta, driver_killed_at, tiny_config, write_config


def reference_meta_gradient(cfg: ExperimentConfig, shared: dict[str, torch.Tensor], step: int,
                            pcgrad: bool) -> torch.Tensor:
    """The meta-gradient computed in this process, with no Ray and no flat buffers."""
    tok = load_tokenizer(cfg.model)
    total = sum(t.weight for t in cfg.tasks)
    grads, weights = [], []
    for spec in cfg.tasks:
        task = load_task(spec, tok, cfg.data_dir, cfg.cache_dir)
        per_replica = []
        for stream in [replica_key(spec.name, r) for r in range(spec.replicas)]:
            model = build_task_model(cfg, spec.name, spec.type, task.num_labels, len(tok))
            with torch.no_grad():
                for name, p in model.shared_named_parameters().items():
                    p.copy_(shared[name])
            episode = task.episode(cfg.meta.episode, cfg.seed, step, stream=stream,
                                   label_template=cfg.meta.proto.prior_template)
            torch.manual_seed(step_seed(cfg.seed, stream, step))
            params = {**model.shared_named_parameters(), **model.head_named_parameters(spec.name)}
            r = task_gradient(cfg.meta.algorithm, model, spec.name, spec.type, episode, params,
                              **algorithm_options(cfg.meta))
            names = list(model.shared_named_parameters())
            per_replica.append(torch.cat([r.grads[n].reshape(-1) if n in r.grads
                                          else torch.zeros(shared[n].numel())
                                          for n in names]))
        # replicas: averaged before the mixture weighting
        grads.append(sum(per_replica) / len(per_replica))
        weights.append(spec.weight / total)
    if pcgrad:  # Yu et al. 2020, written out again here independently of raymeta.core.combine
        import zlib

        rng = np.random.default_rng(zlib.crc32(f"{cfg.seed}:{step}".encode()))
        projected = []
        for i, g in enumerate(grads):
            g = g.clone()
            for j in rng.permutation(len(grads)):
                if j != i and torch.dot(g, grads[j]) < 0:
                    g = g - torch.dot(g, grads[j]) / torch.dot(grads[j], grads[j]) * grads[j]
            projected.append(g)
        grads = projected
    return sum(w * g for w, g in zip(weights, grads))


CASES = [(a, "mean", 1) for a in ALGORITHMS] + [("metaopt-svm", "mean", 1), ("fomaml", "pcgrad", 1),
                                                ("fomaml", "mean", 2),
                                                ("protonet-prior", "mean", 1), ("maml-prior",
                                                                                "mean", 1)]


@pytest.mark.parametrize("algorithm, combine, replicas", CASES, ids=[f"{a}-{c}-x{r}" for a, c,
                                                                     r in CASES])
def test_meta_gradient_equals_single_process_reference(algorithm, combine, replicas, task_actors,
                                                       mixed_data, tmp_path):
    data = tiny_config(tmp_path, mixed_data, combine=combine, **algorithm_meta(algorithm))
    for t in data["tasks"][:2]:
        t["replicas"] = replicas  # x2: data parallelism within the classification and the NER task
    # clipping rescales .grad in place; compare the raw meta-gradient
    data["optim"]["max_grad_norm"] = None
    cfg = load_config(data=data)
    # the module's actors, reset to this case's config
    trainer = MetaTrainer(cfg, actors=task_actors(cfg))
    trainer.setup()
    try:
        # step 1 also checks that actor state (heads) evolves like the reference's
        for _ in range(2):
            shared = {k: v.detach().clone() for k, v in trainer.state.named.items()}
            step = trainer.step
            trainer.meta_step()
            ref = reference_meta_gradient(cfg, shared, step, pcgrad=combine == "pcgrad")
            got = trainer.last_meta_grad
            assert float(got.norm()) > 0
            rel = float((got - ref).norm() / ref.norm())
            assert rel <= 1e-5, f"{algorithm}/{combine} step {step}: relative error {rel:.2e}"
            if step == 0:
                break  # heads have moved on the actors; the reference starts from fresh heads
    finally:
        trainer.shutdown()


def final_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def train_reusing(cfg: ExperimentConfig, task_actors, **kw) -> Path:
    """``train(cfg)`` on the module's task actors (reset to ``cfg``) instead of new ones."""
    return MetaTrainer(cfg, actors=task_actors(cfg), **kw).run()


def test_deterministic_for_a_seed(task_actors, mixed_data, tmp_path):
    a = tiny_config(tmp_path / "a", mixed_data, algorithm="fomaml")
    b = tiny_config(tmp_path / "b", mixed_data, algorithm="fomaml")
    ta = final_tensors(train_reusing(load_config(data=a), task_actors).parent)
    # new actors: reused ones must not remember anything
    tb = final_tensors(train(load_config(data=b)).parent)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    init = tiny_config(tmp_path / "c", mixed_data, algorithm="fomaml")
    init["seed"] = 4
    tc = final_tensors(train_reusing(load_config(data=init), task_actors).parent)
    assert not all(torch.equal(ta[k], tc[k]) for k in ta)


def test_resume_reaches_the_same_parameters_bit_for_bit(task_actors, mixed_data, tmp_path,
                                                        monkeypatch):
    steps = {"steps": 4, "algorithm": "maml"}
    straight = final_tensors(train_reusing(load_config(data=tiny_config(tmp_path / "a", mixed_data,
                                                                        **steps)),
                                           task_actors).parent)

    cfg = load_config(data=tiny_config(tmp_path / "b", mixed_data, **steps))
    with driver_killed_at(monkeypatch, 2):
        train_reusing(cfg, task_actors)
    ckpt = latest_checkpoint(cfg.output_dir)
    assert ckpt is not None and ckpt.name == "step-00000002"
    resumed = final_tensors(train_reusing(cfg, task_actors, resume=True).parent)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    lines = (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
    # no step twice, none skipped
    assert [__import__("json").loads(x)["step"] for x in lines] == [0, 1, 2, 3]


def test_checkpoint_layout_and_hf_export(task_actors, mixed_data, tmp_path):
    cfg = load_config(data=tiny_config(tmp_path, mixed_data, algorithm="protonet"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        final = train_reusing(cfg, task_actors)
    # the heads' arrays come back read-only from the object store: checkpointing copies them,
    # without a warning
    assert not [str(w.message) for w in caught if "not writable" in str(w.message)]
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(final)
    AutoTokenizer.from_pretrained(final)
    ours = final_tensors(final.parent)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ours.items())
    ck = latest_checkpoint(cfg.output_dir)
    for f in ("model/model.safetensors", "model/tokenizer.json", "trainer_state.safetensors",
              "trainer_state.json", "config.yaml"):
        assert (ck / f).is_file(), f
    out = Path(cfg.output_dir)
    assert (out / "config.yaml").is_file() and (out / "task_affinity.png").is_file()
    assert (out / "training_curves.png").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_zero_weight_task_gets_no_actor(ray_local, mixed_data, tmp_path):
    data = tiny_config(tmp_path, mixed_data, algorithm="multitask")
    data["tasks"][2]["weight"] = 0
    trainer = MetaTrainer(load_config(data=data))
    weights = trainer.mixture.weights
    assert list(weights) == ["cls", "ner"] and abs(sum(weights.values()) - 1) < 1e-12
    assert weights["cls"] == pytest.approx(2 / 3)


def test_cli_train_end_to_end(mixed_data, cli, tmp_path):
    """`raymeta train` in a fresh process: it starts (and stops) its own local Ray instance. One
    task: what is tested is the command line, not the trainer (which the tests above run with every
    task type)."""
    data = tiny_config(tmp_path, mixed_data, algorithm="reptile", steps=2)
    data["tasks"] = data["tasks"][:1]
    path = write_config(tmp_path, data)
    r = cli.run(["train", "--config", path, "meta.inner_steps=1"], cwd=Path.cwd(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "AutoModel.from_pretrained" in r.stdout
    # the console numbers a step as metrics.jsonl does (its index), then how many are done
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 1 and "step 1 (2/2 done)" in r.stderr and "step 0 (1/2 done)" in r.stderr
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.meta.inner_steps == 1 and saved.meta.algorithm == "reptile"
    # meta.reduce: auto, resolved on one machine, saved as the run used it
    assert saved.meta.reduce == "driver"
    # Run again into the same output_dir: refused in one line, before Ray starts, the run left as it
    # was.
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    again = cli.run(["train", "--config", path, "meta.inner_steps=1"], cwd=Path.cwd(), timeout=120)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
    last = again.stderr.strip().splitlines()[-1]
    assert last.startswith(f"raymeta: error: output_dir {tmp_path / 'run'} already holds a run "
                           "(config.yaml, ") and \
        last.endswith("): add --resume to continue it, or --overwrite to start it over"), last
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before
    # --resume with nothing to resume (an output_dir typo): an error, not a new run from step 0
    typo = cli.run(["train", "--config", path, "--resume", f"output_dir={tmp_path / 'rnu'}"],
                   cwd=Path.cwd(), timeout=120)
    assert typo.returncode == 2 and typo.stderr.strip().splitlines()[-1] == (
        "raymeta: error: --resume: no complete checkpoint to resume from under output_dir "
                                                                             f"{tmp_path / 'rnu'} "
        "(leave out --resume to start from step 0)"), typo.stderr[-3000:]
    assert not (tmp_path / "rnu").exists()


@pytest.mark.parametrize("algorithm, replicas", [("fomaml", 1), ("maml", 1), ("multitask", 2)])
def test_collective_reduce_matches_driver_reduce(algorithm, replicas, task_actors, mixed_data,
                                                 tmp_path):
    """reduce: collective (gloo all-reduce between the actors, the outer step on every rank) reaches
    the parameters of reduce: driver after several steps; second-order MAML and task replicas
    included."""
    finals = {}
    for mode in ("driver", "collective"):
        data = tiny_config(tmp_path / mode, mixed_data, algorithm=algorithm, reduce=mode, steps=3)
        data["tasks"][1]["replicas"] = replicas  # NER: its replicas must keep one head between them
        finals[mode] = final_tensors(train_reusing(load_config(data=data), task_actors).parent)
        if replicas > 1:
            heads = load_file(str(latest_checkpoint(data["output_dir"])
                                  / "trainer_state.safetensors"))
            a = {k.split(".", 2)[2]: v for k, v in heads.items() if k.startswith("task.ner.head.")}
            b = {k.split(".", 2)[2]: v for k,
                 v in heads.items() if k.startswith("task.ner#1.head.")}
            assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for k, v in finals["driver"].items():
        c = finals["collective"][k]
        assert torch.allclose(v, c, rtol=1e-5, atol=1e-6), k
    cfg = load_config(data=tiny_config(tmp_path, mixed_data))
    torch.manual_seed(cfg.seed)  # the trainer's initial encoder: the steps must have moved it
    from raymeta.core.model import load_encoder

    init = load_encoder(cfg.model, len(load_tokenizer(cfg.model))).state_dict()
    assert any(not torch.equal(init[k], finals["collective"][k]) for k in finals["collective"])
