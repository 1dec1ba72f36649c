"""Memory as a resource (raymeta.cluster.memory): what a task actor declares to Ray, the one line
for a run whose actors cannot all fit, and the heap handed back. No Ray."""

from __future__ import annotations

import ctypes

import pytest

from raymeta.cluster import ClusterView, infeasible, plan_actors, request_of
from raymeta.cluster.memory import (
    GB,
    TASK_BYTES,
    actor_memory_bytes,
    memory_room_error,
    trim_heap,
    worker_memory_bytes,
)
from raymeta.config import ResourcesConfig, load_config
from raymeta.errors import RaymetaError

MINILM = dict(params=22_713_216, trainable=22_713_216, hidden=384, layers=6, heads=12)


def cfg(*overrides: str):
    return load_config("starter", overrides=list(overrides))


def test_auto_estimate_adds_up_the_parts_and_grows_with_what_it_should():
    base = actor_memory_bytes(cfg(), **MINILM)
    assert list(base) == ["bbc_news", "chatterbot_language", "chatterbot_response",
                          "smlmt_starter"]
    # MiniLM on starter's episodes: measured peaks of 1.2 to 2.4 GB (benchmarks/results/memory.md)
    assert all(1.0 * GB < v < 3.0 * GB for v in base.values())
    # bbc_news's 128 tokens against the others' 64: more activations
    assert base["bbc_news"] > base["smlmt_starter"]
    # collective keeps the actor's own parameters and AdamW's two moments: 3 x 4 bytes each
    coll = actor_memory_bytes(cfg("meta.reduce=collective"), **MINILM)
    assert {t: coll[t] - base[t] for t in base} == {t: 12 * MINILM["trainable"] for t in base}
    # LoRA: a small trainable part, so a smaller gradient buffer
    lora = actor_memory_bytes(cfg(), **{**MINILM, "trainable": 100_000})
    assert base["bbc_news"] - lora["bbc_news"] == 4 * (MINILM["trainable"] - 100_000)
    # wider episodes need more activations; a bigger model more of each
    wider = actor_memory_bytes(cfg("meta.episode.shots=16"), **MINILM)
    assert all(wider[t] > base[t] for t in base)
    mpnet = dict(params=109_486_464, trainable=109_486_464, hidden=768, layers=12, heads=12)
    assert actor_memory_bytes(cfg(), **mpnet)["bbc_news"] > 2 * base["bbc_news"]


def test_a_number_is_gb_for_every_task_and_null_declares_nothing():
    fixed = actor_memory_bytes(cfg("resources.memory_per_actor=1.5"), **MINILM)
    assert set(fixed.values()) == {int(1.5 * GB)} and len(fixed) == 4
    assert actor_memory_bytes(cfg("resources.memory_per_actor=null"), **MINILM) is None
    for bad in ("0", "-1", "lots"):
        with pytest.raises(RaymetaError, match="memory_per_actor"):
            cfg(f"resources.memory_per_actor={bad}")


def test_memory_in_a_request_is_named_in_gb():
    view = ClusterView(({"CPU": 2.0, "memory": 8 * GB},), autoscaler=False)
    opts = {**plan_actors(ResourcesConfig(), 1, view)[0], "memory": 10 * GB}
    assert request_of(opts)["memory"] == 10 * GB
    why = infeasible(opts, view, "task 'a'")
    assert why is not None and "task 'a' asks for memory=10.00GB" in why
    assert "largest: 8.00GB" in why


def test_an_autoscaler_node_type_that_does_not_say_its_memory_is_not_judged_on_it():
    from raymeta.cluster import NodeType

    want = {"CPU": 1.0, "memory": 3.0 * GB}
    unsaid = ClusterView(({"CPU": 0.0, "memory": 1 * GB},), autoscaler=True,
                         node_types=(NodeType("worker.cpu", {"CPU": 4}, 2),))
    assert infeasible(want_opts(want), unsaid) is None
    # and since Ray's autoscaler would add no such node for a request with memory, the actors of
    # such a cluster declare none (ActorPool.start)
    assert not unsaid.scales_by_memory
    small = ClusterView(({"CPU": 0.0, "memory": 1 * GB},), autoscaler=True,
                        node_types=(NodeType("worker.cpu", {"CPU": 4, "memory": 2 * GB}, 2),))
    assert small.scales_by_memory and ClusterView(({"CPU": 2.0},)).scales_by_memory
    assert "memory=3.00GB" in infeasible(want_opts(want), small)


def want_opts(want: dict[str, float]) -> dict[str, float]:
    return {"num_cpus": want["CPU"], "memory": want["memory"]}


def test_a_run_that_cannot_fit_its_actors_says_so_in_one_line_naming_the_knobs():
    nodes = ({"CPU": 2.0, "memory": 5 * GB}, {"CPU": 2.0, "memory": 3.5 * GB})
    assert memory_room_error([1 * GB] * 8, nodes) is None  # 5 + 3 actors fit
    assert memory_room_error([3 * GB, 2 * GB, 2 * GB, 1 * GB], nodes) is None  # 3+2 | 2+1
    line = memory_room_error([1 * GB] * 9, nodes)
    assert line is not None and "\n" not in line
    for part in ("9 task actors", "1.00 GB", "room for 8", "resources.workers",
                 "model.trainable: lora", "max_length", "resources.memory_per_actor"):
        assert part in line, part
    # each actor fits some node, but not all of them together
    assert "room for 1" in memory_room_error([4 * GB, 4 * GB], nodes)


def test_trim_heap_hands_freed_pages_back():
    """100 MB of small blocks, freed, stay in glibc's heap until trimmed."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc")

    def anon_mb() -> float:
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1]) / 1024
        pytest.skip("no Pss_Anon in smaps_rollup")

    malloc, free = libc.malloc, libc.free
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.argtypes = [ctypes.c_void_p]
    memset = ctypes.memset
    # blocks below the mmap threshold come from the heap; freeing every other one (as a step frees
    # its temporaries between longer-lived objects) leaves holes the heap cannot give back by
    # shrinking at its end, so their pages stay the process's
    blocks = [malloc(64 * 1024) for _ in range(3200)]
    for b in blocks:
        memset(b, 1, 64 * 1024)
    before = anon_mb()
    for b in blocks[::2]:
        free(b)
    kept = anon_mb()
    trim_heap()
    after = anon_mb()
    for b in blocks[1::2]:
        free(b)
    assert kept > before - 20  # 100 MB freed, but still held by the process
    assert after < kept - 80  # trimmed: handed back


# -- a worker owning several tasks (resources.workers) -----------------------------------------


def test_a_worker_declares_its_largest_task_and_each_other_tasks_own_part():
    assert worker_memory_bytes([2 * GB]) == 2 * GB
    assert worker_memory_bytes([1 * GB, 2 * GB, 1 * GB]) == 2 * GB + 2 * TASK_BYTES
    assert TASK_BYTES < 0.1 * GB  # a task's rows and head, not another model


def test_workers_auto_is_one_per_gpu_else_per_cpu_capped_by_memory_and_the_tasks():
    from raymeta.train.pool import worker_count

    def count(view, actors=64, memory=None, **res):
        c = load_config("starter", overrides=[f"resources.{k}={v}" for k, v in
                                               {"workers": "auto", **res}.items()])
        return worker_count(c, actors, memory, view)

    cpus = ClusterView(({"CPU": 8.0, "memory": 64 * GB},), autoscaler=False)
    gpus = ClusterView(({"CPU": 8.0, "GPU": 2.0, "memory": 64 * GB},), autoscaler=False)
    assert count(cpus) == 8 and count(gpus) == 2 and count(gpus, gpus=0) == 8
    assert count(cpus, num_cpus_per_actor=2) == 4
    assert count(cpus, memory={"a": 16 * GB}) == 4  # 64 GB hold four
    assert count(cpus, actors=8) is None  # a process per task already
    assert count(None) is None  # inside a Ray Tune trial: one per task actor
    fixed = load_config("starter", overrides=["resources.workers=2"])
    assert worker_count(fixed, 4, None, None) == 2 and worker_count(fixed, 2, None, None) is None


def test_an_evaluation_run_declares_what_it_trains_or_only_embeds():
    """raymeta evaluate's and fit's runs declare memory from the same parts as a task actor: a
    run that trains the encoder holds its gradients, AdamW's moments and every layer's
    activations; one that only embeds, the weights and one layer's activations."""
    from raymeta.cluster.memory import BASE_BYTES, run_memory_bytes

    dims = {k: MINILM[k] for k in ("params", "hidden", "layers", "heads")}
    p = dims.pop("params")
    embed = run_memory_bytes(p, **dims, rows=64, max_length=64, trains=False)
    tune = run_memory_bytes(p, **dims, rows=64, max_length=64, trains=True)
    assert BASE_BYTES + 4 * p < embed < 1.0 * GB < tune < 3.0 * GB
    # training adds the gradient and two moments per value and five more layers of activations
    assert tune - embed == 12 * p + 5 * (embed - BASE_BYTES - 4 * p)
    assert run_memory_bytes(p, **dims, rows=32, max_length=128, trains=True) > run_memory_bytes(
        p, **dims, rows=32, max_length=64, trains=True)


def test_an_evaluation_run_no_node_can_hold_is_one_line_before_any_starts():
    from raymeta.cluster import task_options

    memory = {("plain", "setfit", "clinc"): int(2.5 * GB),
              ("plain", "prototype", "clinc"): int(0.8 * GB)}

    def run_options(memory, cpus, view):  # as raymeta evaluate calls it
        return task_options(memory, cpus, view,
                            lambda k: f"each {k[1]} run of task '{k[2]}' (--init {k[0]})",
                            fix="give a node more memory, or the task a smaller max_length")
    roomy = ClusterView(({"CPU": 2.0, "memory": 8 * GB},), autoscaler=False)
    opts = run_options(memory, 1.0, roomy)
    assert opts[("plain", "setfit", "clinc")] == {"num_cpus": 1.0, "memory": int(2.5 * GB)}
    tight = ClusterView(({"CPU": 2.0, "memory": 2 * GB},), autoscaler=False)
    with pytest.raises(RaymetaError) as err:
        run_options(memory, 1.0, tight)
    line = str(err.value)
    assert "\n" not in line and "setfit run of task 'clinc' (--init plain)" in line
    assert "memory=2.50GB" in line and "max_length" in line
    # an autoscaler that cannot grow for memory: nothing declared, nothing refused
    from raymeta.cluster import NodeType

    unsaid = ClusterView(({"CPU": 2.0, "memory": 1 * GB},), autoscaler=True,
                         node_types=(NodeType("worker.cpu", {"CPU": 4}, 2),))
    assert run_options(memory, 1.0, unsaid)[("plain", "setfit", "clinc")] == {"num_cpus": 1.0}
