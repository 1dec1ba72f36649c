"""Meta-training on Ray: the driver's loop (:mod:`.trainer`), one actor per task (:mod:`.actor`), the actors'
process group (:mod:`.collective`), logging (:mod:`.tracking`) and meta-validation (:mod:`.validation`).

It imports :mod:`raymeta.core` and :mod:`raymeta.tasks`, and of :mod:`raymeta.eval` only what meta-validation
scores with; :mod:`raymeta.eval` never imports it.
"""
