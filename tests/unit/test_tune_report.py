"""The trial rows of ``raymeta tune``'s summary, from a trial's last result (no Ray instance)."""

from __future__ import annotations

from raymeta.tune.report import _reports
from raymeta.tune.scoring import METRIC


def test_reports_count_along_the_checkpoints_the_last_result_continues():
    # A trial restored from its first checkpoint (step 2) that reported steps 4 and 6 after it:
    # Tune's result log may hold step 4 twice, or only the rows since the restore, but its
    # training_iteration says three
    assert _reports({METRIC: 0.7, "step": 6, "training_iteration": 3}) == 3
    assert _reports({METRIC: 0.7, "step": 2, "training_iteration": 1}) == 1
    assert _reports({}) == 0  # failed before its first report
