"""The meta-step speed benchmark (``raymeta speed``): time breakdown, ratios against a single-process reference
and Ray Train DDP (:mod:`.baselines`), memory. Apart from the library: only the CLI imports this package."""
