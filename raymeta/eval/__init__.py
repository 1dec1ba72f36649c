"""Evaluation of an init on few-shot tasks: seeded K-shot splits (:mod:`.evaluate`), fine-tuning
(:mod:`.finetune`), the nearest-prototype method (:mod:`.prototype`), SetFit (:mod:`.setfit`), N-way episodes
(:mod:`.episodic`), metrics and reports. Never imports :mod:`raymeta.train`.
"""
