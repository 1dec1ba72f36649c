"""`raymeta speed` (raymeta.speed.bench) on a tiny case: the structure and sanity of its figures,
never their speed (the machine is shared: timing targets are reported by the benchmark, not asserted
here)."""

from __future__ import annotations

import math

import pytest

from raymeta.speed.bench import TINY_BERT, BenchSettings, run_bench
from raymeta.speed.report import check_targets, format_table

from ..conftest import TINY_BERT as TEST_TINY_BERT


def tiny_param_bytes(trainable: str = "full") -> int:
    from raymeta.config import ModelConfig
    from raymeta.core.model import load_encoder

    encoder = load_encoder(ModelConfig(from_config=TINY_BERT, trainable=trainable))
    return 4 * sum(p.numel() for p in encoder.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def result(ray_local):
    return run_bench(BenchSettings(models=["tiny"], tasks=[2], steps=2, warmup=1, ddp_tasks=[],
                                   trainable=["full", "lora"]))


def test_the_tiny_model_is_the_test_suites():
    # one definition: the shipped `tiny` config's model, as the CLI loads it, is what the suite and
    # `raymeta speed` build
    from raymeta.config import load_config

    assert TINY_BERT == TEST_TINY_BERT == load_config("tiny").model.from_config


@pytest.mark.slow  # the run behind `make speed-quick`, which CI runs as well
def test_rows_ratios_and_breakdown(result):
    row, lora = result["rows"]
    assert (row["trainable"], lora["trainable"]) == ("full", "lora")
    assert row["model"] == "tiny" and row["tasks"] == 2 and "ddp" not in row
    for mode in ("driver", "collective"):
        m = row[mode]
        assert m["steps"] == 2
        for key in ("step_ms", "compute_ms", "step_over_compute", "vs_reference", "bytes_ratio",
                    "peak_rss_mb"):
            assert math.isfinite(m[key]) and m[key] > 0, (mode, key, m[key])
        # the slowest actor's compute is part of the step
        assert m["step_ms"] >= m["compute_ms"] * 0.5
        assert len(m["rss_mb"]) == 2
    d = row["driver"]
    assert all(d[k] >= 0 for k in ("publish_ms", "load_ms", "reduce_ms", "outer_ms"))
    assert d["publish_ms"] + d["load_ms"] + d["reduce_ms"] + d["outer_ms"] < d["step_ms"]


@pytest.mark.slow  # the run behind `make speed-quick`, which CI runs as well
def test_bytes_are_counted_from_the_arrays_moved(result):
    row, lora = result["rows"]
    assert row["shared_bytes"] == tiny_param_bytes()
    d, c = row["driver"], row["collective"]
    assert d["bytes_counted"] == "measured"
    # float32 parameters in, float32 gradient out
    assert d["bytes_per_actor"] == 2 * row["shared_bytes"]
    assert c["bytes_ratio"] == pytest.approx(1.0)  # ring all-reduce, N = 2: 2(N-1)/N
    # LoRA: only the adapters travel, so the same ratios hold for far fewer bytes
    assert lora["shared_bytes"] == tiny_param_bytes(trainable="lora") < row["shared_bytes"] / 50
    # all of the encoder's parameters, frozen ones included
    assert lora["encoder_bytes"] > row["shared_bytes"]
    assert lora["driver"]["bytes_per_actor"] == 2 * lora["shared_bytes"]
    assert lora["driver"]["bytes_vs_all_params"] == pytest.approx(2 * lora["shared_bytes"]
                                                                  / lora["encoder_bytes"])
    assert lora["collective"]["bytes_ratio"] == pytest.approx(1.0)
    assert "reference" not in lora and "ddp" not in lora  # baselines: the full rows only


@pytest.mark.slow  # the run behind `make speed-quick`, which CI runs as well
def test_reference_computes_the_actors_gradient(result):
    err = result["rows"][0]["reference"]["grad0_rel_err"]
    assert err is not None and err <= 1e-5, err


@pytest.mark.slow  # the run behind `make speed-quick`, which CI runs as well
def test_targets_and_table(result):
    targets = {(t["target"], t["where"]): t for t in check_targets(result)}
    t = targets[("bytes per actor / shared parameters, worst case", "all driver")]
    assert t["value"] == pytest.approx(2.0) and t["met"] is True
    # not measured here
    assert targets[("step / slowest-actor compute", "minilm N=2 driver")]["met"] is None
    table = format_table(result)
    assert ("| tiny | 2 | full | multitask | driver |" in table
            and "| tiny | 2 | lora | multitask | collective |" in table)
    assert "not measured" in table
    # MiniLM not run here
    assert targets[("lora: bytes per actor, full ÷ lora", "minilm N=2 driver")]["met"] is None


def test_bfloat16_transfer_halves_the_gradient_bytes(ray_local):
    out = run_bench(BenchSettings(models=["tiny"], tasks=[1], reduce=["driver"], steps=1, warmup=1,
                                  ddp_tasks=[],
                                  transfer_dtype="bfloat16"))
    row = out["rows"][0]
    assert row["driver"]["bytes_ratio"] == pytest.approx(1.5)
    err = row["reference"]["grad0_rel_err"]
    # rounded to bfloat16 (8 significant bits), and still the same gradient
    assert 1e-5 < err < 1e-2, err
