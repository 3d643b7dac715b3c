"""Hydra plugin: the Ray launcher with one resource request per job (`hydra/launcher=ray`)."""
