"""Ray Tune over task mixtures and learning rates: the search (:mod:`.search`), its space
(:mod:`.space`), the scorer of each trial's checkpoints (:mod:`.scoring`) and the summary of a
finished search (:mod:`.report`)."""
