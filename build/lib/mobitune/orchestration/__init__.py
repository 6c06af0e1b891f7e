"""Prefect: the sweep flow, the slot runner that hands trials to long-lived flow runs on workers, the trial flows,
their mailbox, the local runner, the nightly form, server setup, and what the Prefect UI shows."""
