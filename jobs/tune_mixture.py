"""Search task mixtures and learning rates with Ray Tune: the ``ray job submit`` entry point of
``raymeta tune``.

On a laptop (a local Ray instance on a loopback address)::

    python jobs/tune_mixture.py --config configs/tune_starter.yaml --num-samples 8

On a cluster (results under tune.storage_path, e.g. s3://bucket/raymeta; the client needs
RAY_AUTH_MODE=token)::

    RAY_AUTH_MODE=token RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265 \\
        ray job submit --working-dir . -- python jobs/tune_mixture.py --config
        configs/tune_starter.yaml \\
        --num-samples 32 output_dir=s3://my-bucket/raymeta/search data_dir=s3://my-bucket/data

Each trial reserves its task actors' resources up front (a placement group): with ``resources.gpus:
auto`` a GPU per actor when the cluster has GPUs or its autoscaler has a GPU node type (the shipped
cluster.yaml's start at 0); ``resources.gpus=1`` says so outright. Tune's experiment goes to
``<output_dir>/tune`` (or tune.storage_path).

Resume an interrupted search with the same command plus ``--resume``.
"""

import sys
from pathlib import Path

# The submitted working directory's package wins over an older installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymeta.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
