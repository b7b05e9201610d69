"""Training side of dcx: the preprocessing contract, the model registry, the model card,
metrics, synthetic radiographs, and the dcx-train / dcx-eval / dcx-synth commands."""
