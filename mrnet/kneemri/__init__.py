"""External validation on the public KneeMRI (Rijeka) dataset: reader, cache, phantoms,
zero-shot scoring and retraining, evaluation."""
