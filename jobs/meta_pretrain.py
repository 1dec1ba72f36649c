"""Meta-pretrain the shared encoder: the ``ray job submit`` entry point of ``raymeta train``.

On a laptop (the job starts a local Ray instance on a loopback address)::

    python jobs/meta_pretrain.py --config configs/starter.yaml meta.steps=40

On a cluster (the CLI needs ray[default]; token auth is on, so the client needs RAY_AUTH_MODE=token)::

    RAY_AUTH_MODE=token RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265 \\
        ray job submit --working-dir . -- python jobs/meta_pretrain.py --config configs/starter.yaml

Inside a submitted job ``RAY_ADDRESS`` is set, so the trainer joins the cluster instead.
"""

import sys
from pathlib import Path

# The submitted working directory's package wins over an older installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymeta.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
