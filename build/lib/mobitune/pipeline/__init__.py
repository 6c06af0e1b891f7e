"""DVC: the stage entry points ``dvc.yaml`` runs, the paths it declares, and sweeps imported as DVC experiments.
Imports no Prefect."""
