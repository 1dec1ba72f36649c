"""Meta-pretrain the shared encoder: the ``ray job submit`` entry point of ``raymeta train``.

On a laptop (the job starts a local Ray instance on a loopback address)::

    python jobs/meta_pretrain.py --config configs/starter.yaml meta.steps=40

On a cluster (the CLI needs ray[default]; token auth is on, so the client needs
RAY_AUTH_MODE=token), e.g. the shipped cluster.yaml's, whose GPU workers start at 0::

    RAY_AUTH_MODE=token RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265 \\
        ray job submit --working-dir . -- python jobs/meta_pretrain.py --config
        configs/benchmark.yaml \\ resources.gpus=1 resources.placement_timeout_s=1200 \\
        data_dir=s3://my-bucket/data output_dir=s3://my-bucket/raymeta/run1

Inside a submitted job ``RAY_ADDRESS`` is set, so the trainer joins the cluster; the entry point
runs on the head, where it reads the autoscaler's node types. ``resources.gpus`` (``auto``: a whole
GPU per task actor when the autoscaler has a GPU node type, and the actors wait for it; ``1``
outright; ``0`` CPU), and ``resources.placement_timeout_s`` (then one line naming what is missing,
exit 2). ``data_dir`` and ``output_dir`` on object storage: no disk is shared between nodes, and the
run outlives its head (``--resume`` continues from the bucket). README "On a cluster".
"""

import sys
from pathlib import Path

# The submitted working directory's package wins over an older installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymeta.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
