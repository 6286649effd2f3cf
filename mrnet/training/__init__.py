"""Training on MRNet: the nine per-plane CNNs, the multitask network, probability extraction
and the per-task ensembles."""
