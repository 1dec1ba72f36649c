"""The meta-step cost model (raymeta.speed.costmodel) and `raymeta speed`'s use of it, without Ray:
the fit recovers the constants it generated rows from, overlap never lengthens a projected step, the
projection scales as a network card and a ring do, `meta.reduce: auto`'s rules, and `raymeta speed
--project` / `--fit-from` through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from raymeta.speed.costmodel import (
    A100,
    BERT_BASE_FLOP_PARAMS,
    BERT_BASE_LORA_PARAMS,
    BERT_BASE_PARAMS,
    CPU_CORE,
    MEASURED,
    MODES,
    CostConstants,
    Link,
    default_reduce,
    driver_limit,
    fit,
    parse_mode,
    predict,
    project,
    step_time,
    summary_of,
    task_flops,
)
from raymeta.speed.report import format_fit

# benchmarks/results/throughput.md#full-run (2026-11-29, 2-CPU shared VM, before meta.overlap):
# (model, N, reduce, step, compute, publish+load, transfer | all-reduce, reduce, outer), ms.
# MEASURED was fitted on these (cores = 2).
SECTION_5_1 = [
    ("minilm", 1, "driver", 425.0, 321.9, 8.6, 16.6, 11.2, 20.2),
    ("minilm", 1, "collective", 355.9, 321.0, None, 14.8, None, 20.1),
    ("minilm", 2, "driver", 777.6, 670.2, 8.7, 22.0, 26.4, 23.6),
    ("minilm", 2, "collective", 625.9, 519.9, None, 70.8, None, 32.8),
    ("minilm", 4, "driver", 1632.4, 1513.5, 11.1, 35.4, 54.0, 22.7),
    ("minilm", 4, "collective", 2062.9, 1775.9, None, 219.0, None, 72.8),
    ("minilm", 8, "driver", 3516.5, 3262.2, 17.8, 46.8, 164.1, 22.3),
    ("minilm", 8, "collective", 4839.3, 4049.4, None, 584.5, None, 205.4),
    ("minilm", 16, "driver", 7298.6, 6810.4, 44.7, 74.6, 372.3, 24.2),
    ("minilm", 16, "collective", 8158.8, 6807.9, None, 996.1, None, 321.7),
    ("tiny", 1, "driver", 1557.1, 1543.5, 2.2, 6.6, 1.0, 2.5),
    ("tiny", 1, "collective", 66.0, 48.3, None, 6.6, None, 1.6),
    ("tiny", 2, "driver", 54.0, 37.0, 4.6, 11.2, 3.0, 2.0),
    ("tiny", 2, "collective", 48.1, 28.6, None, 13.1, None, 4.4),
    ("tiny", 4, "driver", 86.0, 54.1, 5.6, 11.6, 3.6, 1.8),
    ("tiny", 4, "collective", 93.3, 60.0, None, 25.9, None, 10.8),
    ("tiny", 8, "driver", 146.8, 114.2, 11.1, 20.0, 8.6, 1.9),
    ("tiny", 8, "collective", 176.3, 99.3, None, 54.4, None, 17.3),
    ("tiny", 16, "driver", 306.2, 252.7, 14.3, 29.0, 16.0, 2.2),
    ("tiny", 16, "collective", 463.6, 265.2, None, 147.8, None, 42.1),
]
# the trainer's layout.numel (shared_numel) of each
NUMEL = {"minilm": 22_565_376, "tiny": 1_002_112}


def section_5_1_rows() -> list[dict]:
    rows: dict = {}
    for model, n, mode, step, compute, pub, comm, red, outer in SECTION_5_1:
        row = rows.setdefault((model, n), {"model": model, "tasks": n, "trainable": "full",
                                           "algorithm": "multitask",
                                           "shared_numel": NUMEL[model],
                                           "shared_bytes": 4 * NUMEL[model]})
        m = {"step_ms": step, "compute_ms": compute, "outer_ms": outer, "overlap": False}
        m.update({"publish_ms": pub, "load_ms": 0.0, "transfer_ms": comm,
                  "reduce_ms": red} if mode == "driver"
                 else {"allreduce_ms": comm})
        row[mode] = m
    return list(rows.values())


# made-up constants, every one positive and of a different size than MEASURED's
TRUE = CostConstants(publish_fixed_s=2e-3, publish_s_per_byte=5e-11, publish_s_per_task=7e-4,
                     transfer_fixed_s=4e-3,
                     transfer_s_per_task=2e-3, transfer_s_per_byte=1.2e-10,
                     transfer_s_per_byte_task=4e-11,
                     reduce_fixed_s=3e-4, reduce_s_per_byte=9e-11, reduce_s_per_byte_pair=3e-11,
                     outer_fixed_s=2e-3,
                     outer_s_per_param=8e-10, allreduce_fixed_s=5e-3, allreduce_s_per_hop=1.5e-3,
                     allreduce_s_per_byte=6e-10)


def synthetic_rows(c: CostConstants, cores: float | None) -> list[dict]:
    """Rows as `raymeta speed` writes them, each mode's figures exactly what step_time says."""
    rows = []
    for model, params in (("tiny", 1_002_112), ("minilm", 22_565_376), ("base", 109_482_240)):
        for n in (1, 2, 4, 8, 16):
            row = {"model": model, "tasks": n, "trainable": "full", "shared_numel": params,
                   "shared_bytes": 4 * params}
            compute = 0.05 + 0.01 * n + params * 2e-9  # any figure: the rows carry it
            for mode in MODES:
                base, overlap = parse_mode(mode)
                row[mode] = summary_of(step_time(base, n, 4 * params, params, compute, c, overlap,
                                                 cores=cores))
            rows.append(row)
    return rows


@pytest.mark.parametrize("cores", [None, 2])
def test_fit_recovers_the_constants_of_exact_rows(cores):
    result = fit(synthetic_rows(TRUE, cores), cores=cores, prior=CostConstants())
    for key, want in TRUE.to_dict().items():
        got = result.constants.to_dict()[key]
        assert got == pytest.approx(want, rel=1e-6), key
    assert result.max_abs_error < 1e-9 and result.median_abs_error < 1e-9
    assert len(result.rows) == 3 * 5 * len(MODES)
    assert not any(comp["from_prior"] for comp in result.components.values())


def test_what_the_rows_cannot_separate_comes_from_the_prior():
    # one model size: a fixed cost and a per-byte one look alike; overlap rows only: no clean
    # transfer/all-reduce
    rows = [r for r in synthetic_rows(TRUE, None) if r["model"] == "tiny"]
    for r in rows:
        del r["driver:no-overlap"], r["collective:no-overlap"]
    result = fit(rows, prior=MEASURED)
    for name in ("transfer", "reduce", "allreduce"):
        assert (result.components[name]["observations"] == 0
                and result.components[name]["from_prior"])
        for key in ("transfer_fixed_s", "reduce_s_per_byte", "allreduce_s_per_hop"):
            assert result.constants.to_dict()[key] == MEASURED.to_dict()[key]
    assert result.components["publish"]["rank"] < 3 and result.components["publish"]["from_prior"]
    assert all(v >= 0 for v in result.constants.to_dict().values())


def test_the_section_5_1_rows_fit():
    # the rows MEASURED was first fitted on (its comment says how; a refit from a newer run replaces
    # it)
    result = fit(section_5_1_rows(), cores=2, prior=CostConstants())
    assert result.median_abs_error < 0.05 and result.max_abs_error < 0.20, format_fit(result)
    assert not any(comp["from_prior"] for comp in result.components.values())
    assert json.loads(json.dumps(result.to_dict()))["constants"].keys() == MEASURED.to_dict().keys()
    assert predict(section_5_1_rows(), result.constants, cores=2) == result.rows
    assert all(v >= 0 for v in MEASURED.to_dict().values())


def test_overlap_never_makes_a_projected_step_slower():
    rows = project(MEASURED)
    assert len(rows) == 2 * 2 * 3 * 3
    for r in rows:
        assert r["driver_ms"] <= r["driver:no-overlap_ms"] * (1 + 1e-12), r
        assert r["collective_ms"] <= r["collective:no-overlap_ms"] * (1 + 1e-12), r
    # and on one machine, from a single actor to many sharing two cores
    for n in (1, 2, 3, 8, 16, 64):
        for params in (1e6, 2.3e7):
            for base in ("driver", "collective"):
                on, off = (step_time(base, n, 4 * params, params, 0.05 * n, MEASURED, o,
                                     cores=2) for o in (True, False))
                assert on.step_s <= off.step_s * (1 + 1e-12) and on.step_s >= on.compute_s


def test_on_a_link_the_driver_grows_with_n_and_the_collective_exchange_does_not():
    compute = A100.compute_s(task_flops(6400, BERT_BASE_FLOP_PARAMS))
    link = Link(100)

    def at(mode, n):
        return step_time(mode, n, 4 * BERT_BASE_PARAMS, BERT_BASE_PARAMS, compute, MEASURED, True,
                         link, device=A100,
                         spread_s=0.0)

    driver = [at("driver", n).step_s for n in (2, 8, 64, 256)]
    # N copies through one card, N² Gram reads
    assert driver == sorted(driver) and driver[-1] > 50 * driver[0]
    exposed = [at("collective", n).allreduce_s for n in (8, 64, 256)]
    # from 8 ranks on, a ring moves 1.75× to 2× the buffer per rank
    assert max(exposed) < 1.5 * min(exposed)
    c8 = at("collective", 8)
    assert c8.overlapped == ("allreduce",) and c8.hidden["allreduce"] > 0
    assert at("driver", 8).step_s > 10 * c8.step_s


def test_step_breakdown_terms_and_assumptions():
    bd = step_time("driver", 4, 4e6, 1e6, 0.1, MEASURED, False)
    assert bd.step_s == pytest.approx(bd.compute_s + bd.publish_s + bd.transfer_s + bd.reduce_s
                                      + bd.outer_s)
    assert bd.allreduce_s == 0 and bd.overlapped == ()
    on = step_time("driver", 4, 4e6, 1e6, 0.1, MEASURED, True)
    assert on.overlapped == ("reduce",) and on.reduce_s < bd.reduce_s
    assert on.reduce_s + on.hidden["reduce"] == pytest.approx(bd.reduce_s)
    one = step_time("collective", 1, 4e6, 1e6, 0.1, MEASURED, True)
    assert one.allreduce_s == MEASURED.allreduce_fixed_s  # nothing to exchange with one rank
    # a buffer in one bucket is ready only when the backward pass ends: nothing to hide
    small = [step_time("collective", 8, 4e6, 1e6, 0.1, MEASURED, o,
                       Link(25)).allreduce_s for o in (True, False)]
    assert small[0] == pytest.approx(small[1])
    with pytest.raises(ValueError, match="mode"):
        step_time("driver:no-overlap", 2, 4e6, 1e6, 0.1, MEASURED, False)  # type: ignore[arg-type]
    assert parse_mode("collective:no-overlap") == ("collective",
                                                   False) and parse_mode("driver") == ("driver",
                                                                                       True)
    # full 6·P·tokens, frozen 4·P·tokens
    assert task_flops(100, 10) == 6000 and task_flops(100, 10, 0) == 4000


def test_default_reduce_rules():
    bert, lora = int(BERT_BASE_PARAMS), BERT_BASE_LORA_PARAMS
    mode, why = default_reduce(64, bert, bert, 6400, local=False, combine="pcgrad", device=A100,
                               link_gbps=100)
    assert mode == "driver" and "pcgrad" in why
    assert default_reduce(8, 22_565_376, 22_713_216, 512, local=True, device=A100,
                          link_gbps=1)[0] == "driver"
    assert default_reduce(1, bert, bert, 6400, local=False, device=A100, link_gbps=1)[0] == "driver"
    mode, why = default_reduce(256, bert, bert, 6400, local=False, device=A100, link_gbps=10)
    assert mode == "collective" and "collective" in why and "\n" not in why
    # a tie goes to the driver: same compute, almost nothing to move
    assert default_reduce(4, 1000, 1000, 512, local=False, compute_s=10.0,
                          link_gbps=100)[0] == "driver"
    # the caller's compute wins over a device's
    assert default_reduce(8, lora, bert, 6400, local=False, device=A100,
                          compute_s=1e3)[0] == "driver"
    for n in (2, 8, 64):  # CPU actors by default: a decision, never an error
        assert default_reduce(n, 22_565_376, 22_713_216, 512, local=False)[0] in ("driver",
                                                                                  "collective")


def test_driver_limit_is_finite_and_grows_with_the_link():
    limits = [driver_limit(params=22_713_216, flop_params=22_713_216, trainable_params=22_565_376,
                           link=gbps,
                           device=CPU_CORE, tokens_per_task_step=512,
                           basis="one_task") for gbps in (1, 10, 25, 100, 400)]
    assert all(isinstance(n, int) and n >= 1 for n in limits), limits
    assert limits == sorted(limits) and limits[-1] > limits[0], limits
    big = [driver_limit(params=22_713_216, flop_params=22_713_216, trainable_params=22_565_376,
                        link=gbps,
                        device=CPU_CORE, tokens_per_task_step=16384) for gbps in (10, 100, 400)]
    assert all(isinstance(n, int) for n in big) and big == sorted(big) and big[-1] > 1, big
    # the driver limit is where step / compute first passes the threshold
    n = big[-1]
    compute = CPU_CORE.compute_s(task_flops(16384, 22_713_216, 22_565_376))
    ratio = [step_time("driver", k, 4 * 22_565_376, 22_565_376, compute, MEASURED, True, Link(400),
                       spread_s=0.0).step_over_compute for k in (n - 1, n)]
    assert ratio[0] <= 1.10 < ratio[1]


def test_projection_rows_and_table():
    from raymeta.speed.report import format_projection

    rows = project(MEASURED, gpus=(8,), links=(100,), devices=(A100,))
    assert [r["trainable"] for r in rows] == ["full", "lora"]
    full, lora = rows
    assert (full["trainable_params"] == BERT_BASE_PARAMS
            and lora["trainable_params"] == BERT_BASE_LORA_PARAMS)
    # LoRA's compute: forward and the activations' gradients through the frozen encoder, ≈ 4/6 of
    # full's
    assert lora["compute_ms"] / full["compute_ms"] == pytest.approx(4 / 6, rel=0.01)
    assert full["faster"] == "collective" and math.isfinite(full["driver_over_compute"])
    table = format_projection(rows)
    assert table.count("\n") == 3 and "BERT-base" in table and "**collective**" in table


def test_speed_project_through_the_cli(capsys):
    from raymeta.cli import main

    assert main(["speed", "--project"]) == 0
    out = capsys.readouterr().out
    assert "BERT-base" in out and "| A100 |" in out and "| H100 |" in out and "meta.reduce" in out


def test_speed_fit_from_a_missing_or_bad_file_is_one_line(tmp_path, capsys):
    from raymeta.cli import main

    missing = tmp_path / "nope.json"
    assert main(["speed", "--project", "--fit-from", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "no such file" in err[0]
    for text, what in (("{not json", "not JSON"), ('{"rows": 3}', "no list of rows"),
                       ('{"rows": [{"x": 1}]}', "speed"),
                       ('{"rows": []}', "no measured steps")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        assert main(["speed", "--project", "--fit-from", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and what in err[0], err


def test_speed_fit_from_a_result_file(tmp_path, capsys):
    from raymeta.cli import main

    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"settings": {}, "machine": {"affinity": 2},
                                "rows": section_5_1_rows()}))
    assert main(["speed", "--project", "--fit-from", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cost model fit" in out and "20 measured steps" in out and "BERT-base" in out


def test_speed_settings_reduce_modes():
    import argparse

    from raymeta.errors import RaymetaError
    from raymeta.speed.bench import ordered_modes, settings_from_args

    def args(reduce):
        return argparse.Namespace(quick=False, models=None, tasks=None, reduce=reduce,
                                  trainable=None, algorithms=None,
                                  steps=None, warmup=None, transfer_dtype=None, torch_threads=None,
                                  ddp_tasks=None,
                                  no_reference=True, overrides=[])

    s = settings_from_args(args("collective:no-overlap,driver,collective,driver:no-overlap"))
    assert ordered_modes(s.reduce) == ["driver", "driver:no-overlap", "collective:no-overlap",
                                       "collective"]
    with pytest.raises(RaymetaError,
                       match=r"^--reduce driver,fast: expected one or more of driver, collective"):
        settings_from_args(args("driver,fast"))


def test_speed_summaries_targets_and_table_with_every_mode():
    from raymeta.speed.bench import BenchSettings, summarise
    from raymeta.speed.report import check_targets, format_table
    from raymeta.train.record import StepRecord

    rec = StepRecord(step=0, steps=1, loss={}, metrics={}, weights={}, skipped=[], grad_norm=1.0,
                     lr=1e-3, step_s=0.3,
                     compute_max_s=0.2, compute_s={"a": 0.2}, outer_s=0.02, allreduce_s=0.05)
    m = summarise([rec], "collective:no-overlap", 2, 4000)
    assert m["allreduce_ms"] == pytest.approx(80.0) and "publish_ms" not in m
    rows = []
    for model, params in (("minilm", 22_565_376), ("tiny", 1_002_112)):
        for n in (4, 8):
            row = {"model": model, "tasks": n, "trainable": "full", "algorithm": "multitask",
                   "shared_numel": params,
                   "shared_bytes": 4 * params}
            for mode in MODES:
                base, overlap = parse_mode(mode)
                bd = step_time(base, n, 4 * params, params, 0.5, MEASURED, overlap, cores=2)
                row[mode] = {**summary_of(bd), "overhead_ms_per_task": 1e3 * bd.serial_s / n,
                             "bytes_ratio": 2.0,
                             "peak_rss_mb": 1.0, "rss_drift_mb_per_step": 0.0,
                             "store_peak_mb": None}
            rows.append(row)
    result = {"settings": dataclasses.asdict(BenchSettings(reduce=list(MODES))), "rows": rows}
    result["cost_model"] = fit(rows, cores=2).to_dict()
    targets = {(t["target"], t["where"]): t for t in check_targets(result)}
    c4 = targets[("collective with overlap: step / slowest-actor compute", "minilm N=4 collective")]
    assert (c4["value"] == pytest.approx(rows[0]["collective"]["step_over_compute"])
            and c4["limit"] == 1.08)
    fall = targets[("driver serial time (step − compute): fall with overlap",
                    "minilm N=8 driver vs driver:no-overlap")]
    assert fall["at_least"] and fall["met"] is True and fall["value"] > 0.3
    table = format_table(result)
    assert ("| minilm | 8 | full | multitask | collective:no-overlap |" in table
            and "cost model fit" in table)


def test_measured_constants_are_the_fit_of_the_committed_run():
    """MEASURED is not a number typed in: it is the fit of benchmarks/speed_overlap.json (4
    significant digits)."""
    from pathlib import Path

    from raymeta.speed.costmodel import load_fit

    run = Path(__file__).resolve().parents[2] / "benchmarks" / "speed_overlap.json"
    if not run.is_file():
        pytest.skip("benchmarks/ is not in this tree (an installed wheel)")
    fitted = load_fit(run).constants.to_dict()
    assert fitted.keys() == MEASURED.to_dict().keys()
    for k, v in MEASURED.to_dict().items():
        assert v == pytest.approx(fitted[k], rel=1e-3), k
