"""Image generation: `generate_images` (core.py), shards on disk (shards.py), and generation on
any number of devices through Lightning's `trainer.predict` (predict.py)."""
