"""The tasks layer: one LightningModule per task of the paper (Sec. 4), built on `tasks.nn`, and the
registry (`tasks.registry`) that says what each task is."""
