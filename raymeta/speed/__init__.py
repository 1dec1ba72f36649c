"""The meta-step speed benchmark (``raymeta speed``, :mod:`.bench`): time breakdown, ratios
against a single-process reference and Ray Train DDP (:mod:`.baselines`), memory, and the
meta-step's cost model fitted to its rows (:mod:`.costmodel`); the targets' verdicts and the
Markdown tables, the projection's included (:mod:`.report`). Apart from the library: only the CLI
imports this package."""
