"""The Hydra configs, installed as the package ``aligned.conf`` (pyproject.toml maps it to this
directory); ``aligned.config.conf_dir()`` finds them, in a checkout and in a wheel alike."""
