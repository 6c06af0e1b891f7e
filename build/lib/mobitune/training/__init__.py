"""The seed's machine learning: data sets decoded once, device-resident batches, the model, one training loop for
both phases with its checkpoints, evaluation. Knows nothing of sweeps, Prefect, DVC or S3 (storage aside)."""
