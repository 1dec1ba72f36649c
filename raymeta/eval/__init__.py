"""Evaluation of an init on few-shot tasks: seeded K-shot splits (:mod:`.evaluate`), fine-tuning
(:mod:`.finetune`), classifiers on frozen embeddings: prototype, ridge, SVM (:mod:`.frozen`), SetFit
(:mod:`.setfit`), N-way episodes (:mod:`.episodic`), metrics and reports. Never imports
:mod:`raymeta.train`.
"""
