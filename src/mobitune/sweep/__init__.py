"""The sweep engine, with no Prefect in it: trial plans, the scheduler (grid, one-at-a-time, Optuna, ASHA), a
sweep's run over any :class:`~mobitune.sweep.run.Runner`, trial requests and result files, results, figures and
the markdown report beside the lab report's numbers, publishing. Only :mod:`mobitune.sweep.trial_training` imports
torch."""
