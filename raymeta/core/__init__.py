"""The pure core: pure torch, never imports Ray (``tests/unit/test_structure.py`` holds the rule).

Models and heads (:mod:`.model`), which parameters train (:mod:`.trainable`, ``peft``), the meta-learning
algorithms (:mod:`.algorithms`: one task's gradient from one episode), the reduction math (:mod:`.combine`),
the outer optimizer (:mod:`.optim`), and the on-disk formats (:mod:`.checkpoint`, :mod:`.model_card`, strict JSON:
:mod:`.jsonio`).
Everything here runs in one process; :mod:`raymeta.train` distributes it.
"""
