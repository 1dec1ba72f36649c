"""The pure core: pure torch, never imports Ray, nor :mod:`raymeta.storage`: it reads and writes
local paths only (``tests/unit/test_structure.py`` holds the rule). A model given as a storage URI
is fetched through the ``fetch`` its loader is passed (:func:`raymeta.storage.local_model_path`);
checkpoints reach object storage through :mod:`raymeta.train.checkpoint_mirror`.

Models and heads (:mod:`.model`), which parameters train (:mod:`.trainable`, ``peft``), the
meta-learning algorithms (:mod:`.algorithms`: one task's gradient from one episode), the reduction
math (:mod:`.combine`), the outer optimizer (:mod:`.optim`), which reduce form ``meta.reduce: auto``
picks (:mod:`.reduce_choice`), and the on-disk formats (:mod:`.checkpoint`, :mod:`.model_card`,
strict JSON: :mod:`.jsonio`). Everything here runs in one process; :mod:`raymeta.train` distributes
it.
"""
