"""``raymeta speed``'s cases without Ray: which config each (model, N, trainable, algorithm) row
meta-trains."""

from __future__ import annotations

import pytest

from raymeta.errors import ConfigError
from raymeta.speed.bench import BenchSettings, bench_config


def test_each_algorithm_is_a_case_and_metaopt_names_its_head(tmp_path):
    s = BenchSettings(algorithms=["protonet", "metaopt", "metaopt:svm"])
    # the first, by default
    assert bench_config("tiny", 2, s, str(tmp_path)).meta.algorithm == "protonet"
    ridge = bench_config("tiny", 2, s, str(tmp_path), algorithm="metaopt").meta
    svm = bench_config("tiny", 2, s, str(tmp_path), algorithm="metaopt:svm").meta
    assert (ridge.algorithm, ridge.metaopt.head) == ("metaopt", "ridge")
    assert (svm.algorithm, svm.metaopt.head, svm.metaopt.iterations) == ("metaopt", "svm", 50)
    s.extra = ["meta.metaopt.iterations=7"]  # the user's overrides win
    assert bench_config("tiny", 2, s, str(tmp_path),
                        algorithm="metaopt:svm").meta.metaopt.iterations == 7
    with pytest.raises(ConfigError, match="config key 'meta.metaopt.head'"):
        bench_config("tiny", 2, s, str(tmp_path), algorithm="metaopt:lasso")
