"""The sweep engine, with no Prefect in it: trial plans, the scheduler (grid, one-at-a-time, Optuna, ASHA), a
sweep's run over any :class:`~mobitune.sweep.run.Runner`, trial requests and result files, publishing. What a
finished sweep shows (results, figures, reports) is :mod:`mobitune.report`. Only
:mod:`mobitune.sweep.trial_training` imports torch."""
