"""Image generation: one function for every image (`generate_images`), shards on disk, and
generation on any number of devices through Lightning's `predict` (see each module)."""

from ddpm_unet.generation.core import (
    DEFAULT_MODEL_BATCH,
    GENERATION_RULES,
    FixedBatch,
    effective_model_batch,
    generate_images,
    image_generators,
    image_seed,
)
from ddpm_unet.generation.shards import ShardStore, write_npz

__all__ = [
    "DEFAULT_MODEL_BATCH",
    "GENERATION_RULES",
    "FixedBatch",
    "ShardStore",
    "effective_model_batch",
    "generate_images",
    "image_generators",
    "image_seed",
    "write_npz",
]
