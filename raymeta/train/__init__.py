"""Meta-training on Ray: the driver's loop (:mod:`.trainer`), one actor per task (:mod:`.actor`) started, reused and
ended by an actor pool (:mod:`.pool`), the two reduce forms of a step (:mod:`.reduce`) and the actors' process group
(:mod:`.collective`), the step record (:mod:`.record`), logging (:mod:`.tracking`) and meta-validation
(:mod:`.validation`).

It imports :mod:`raymeta.core` and :mod:`raymeta.tasks`, and of :mod:`raymeta.eval` only what meta-validation
scores with; :mod:`raymeta.eval` never imports it.
"""
