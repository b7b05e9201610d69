"""Training side of dcx: data and splits, training, evaluation, synthetic radiographs, and the
dcx-train / dcx-eval / dcx-synth commands. What a trained model *is* (card, registry,
preprocessing contract, metrics) lives in :mod:`dcx.core`."""
