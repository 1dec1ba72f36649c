"""Meta-step throughput: the `raymeta speed` command as a script (same options).

    python benchmarks/throughput.py --quick
    python benchmarks/throughput.py --output benchmarks/throughput.json      # the full run
    (benchmarks/results/throughput.md#full-run)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymeta.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["speed", *sys.argv[1:]]))
