"""The shared core every dataset stands on: params loading, I/O, errors, provenance, runtime
(device, precision, layout), packed sets and their cache, the trainer, statistics, backbones,
weights, augmentation, data parallelism, plots and HTML helpers. It imports nothing above it."""
