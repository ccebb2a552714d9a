"""Trainer/config pairs (TRL style): `*_config.py` holds the arguments, `*_trainer.py` the Trainer."""
