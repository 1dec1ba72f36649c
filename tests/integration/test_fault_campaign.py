"""The seeded fault campaign (tests/fault_campaign.py), in the slow tier (``make test-slow``).

For each ``meta.reduce`` (driver, collective), a 60-step tiny run (checkpoint every 5 steps,
validation every 10) takes seven faults drawn from a printed seed: task actors SIGKILLed after a
step, while the actors restart, during a checkpoint and during a validation, the driver SIGKILLed in
the middle of a checkpoint write, then a task actor while the actors start for ``raymeta train
--resume``. It must end bit-equal to an uninterrupted run: ``final`` and ``best`` models, every
loss, gradient norm and validation score, each step and validation logged once, no checkpoint
leftovers.

The seed is ``RAYMETA_FAULT_SEED`` when set (try others), else :data:`SEED`. Replay a failing seed
with the command its failure prints::

    .venv/bin/python -m tests.fault_campaign run --seed SEED --reduce REDUCE

Each campaign writes ``summary.json`` (fault kind -> planned, injected, survived, bit-equal) into
its tmp dir and prints it. About 100 s per reduce mode on 2 CPUs. The plan itself is checked without
Ray in the default tier.
"""

from __future__ import annotations

import json
import os

import pytest

from .. import fault_campaign as fc
from .cluster import head

SEED = 20240611  # CI's; RAYMETA_FAULT_SEED overrides it


def campaign_seed() -> int:
    return int(os.environ.get("RAYMETA_FAULT_SEED", SEED))


def test_plan_draws_every_kind_in_an_order_that_can_fire():
    """Without Ray, for CI's seed and 300 others: each plan has at least 5 faults, every kind, the
    driver's once, each at a step where its kind can fire, in increasing steps (a fault waits for
    the one before it), and the restart right after an actor fault that comes after a checkpoint (so
    the restart restores one). The same seed, the same plan."""
    for seed, reduce in [(s, r) for s in (SEED, *range(300)) for r in ("driver", "collective")]:
        faults = fc.plan(seed, reduce)
        assert faults == fc.plan(seed, reduce)
        assert len(faults) >= 5 and {f.kind for f in faults} == set(fc.KINDS)
        assert [f.index for f in faults] == list(range(len(faults)))
        assert sum(f.kind == "driver" for f in faults) == 1 and sum(f.kind == "restart"
                                                                    for f in faults) == 1
        i = next(f.index for f in faults if f.kind == "driver")
        # an actor lost while the actors start for the --resume
        assert faults[i + 1].kind == "resume_start"
        timed = [f for f in faults if f.kind not in ("restart", "resume_start")]
        assert [f.step for f in timed] == sorted({f.step for f in timed})
        for f in timed:
            assert 1 <= f.step <= fc.STEPS
            assert fc._allowed(f.kind, f.step, fc.STEPS, fc.EVERY, fc.VAL_EVERY), f.describe()
            assert ((f.task is None) == (f.kind == "driver")
                    and (f.u is not None) == (f.kind == "driver"))
            # a complete checkpoint to --resume from
            assert f.kind != "driver" or f.step >= 2 * fc.EVERY
        i = next(f.index for f in faults if f.kind == "restart")
        before = faults[i - 1]
        assert i > 0 and before.kind in fc.ACTOR_KINDS and before.step > fc.EVERY
    assert (fc.plan(1, "driver") != fc.plan(2, "driver")
            and fc.plan(1, "driver") != fc.plan(1, "collective"))


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A `ray start` head that outlives the campaign's driver processes (one of them is
    SIGKILLed)."""
    with head(tmp_path_factory.mktemp("head")) as h:
        yield h


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("reduce", ["driver", "collective"])
def test_fault_campaign_ends_bit_equal_to_an_uninterrupted_run(reduce, ray_head, tmp_path):
    seed = campaign_seed()
    try:
        summary = fc.run_campaign(seed, reduce, tmp_path / "campaign", ray_head["address"])
    except fc.CampaignFailed as e:
        pytest.fail(str(e), pytrace=False)
    print(json.dumps(summary, indent=1))
    by_kind = summary["by_kind"]
    assert all(k["injected"] == k["planned"] == k["survived"] == k["bit_equal"] >= 1
               for k in by_kind.values()), by_kind
    assert sum(k["injected"] for k in by_kind.values()) >= 5
