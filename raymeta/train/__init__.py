"""Meta-training on Ray. The driver's loop (:mod:`.trainer`) hands one step's state
(:mod:`.state`: θ, the optimiser, the mixture of :mod:`.mixture`) and its workers to a reducer
(:mod:`.reduce`, with the actors' process group in :mod:`.collective`); one actor per task
(:mod:`.actor`) is started, reused and ended by an actor pool (:mod:`.pool`), and the learned
weights' target actors by :mod:`.targets`. Around the loop: recovery from a lost actor
(:mod:`.recovery`), the checkpoint state (:mod:`.checkpointing`) and its mirror on object storage
(:mod:`.checkpoint_mirror`), the run's outputs (:mod:`.outputs`), the step record
(:mod:`.record`), logging (:mod:`.tracking`) and meta-validation (:mod:`.validation`, on the tasks
:mod:`.validation_tasks` checks).

It imports :mod:`raymeta.core`, :mod:`raymeta.tasks`, :mod:`raymeta.cluster`, and of
:mod:`raymeta.eval` only what meta-validation scores with; :mod:`raymeta.eval` never imports it.
"""
