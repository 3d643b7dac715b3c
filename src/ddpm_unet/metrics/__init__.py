"""Sample-quality metrics: Inception weights, torch-fidelity FID/KID/IS, cached reference stats.

The in-training FID (torchmetrics) is the callback `ddpm_unet.callbacks.fid.FIDCallback`.
"""

from ddpm_unet.metrics.fidelity import (
    FEATURE_EXTRACTOR,
    UInt8Images,
    UInt8RGBView,
    fidelity_metrics,
    to_rgb,
    to_uint8,
    to_uint8_hwc,
)
from ddpm_unet.metrics.inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILENAME,
    INCEPTION_WEIGHTS_URL,
    InceptionWeightsError,
    InceptionWeightsNotFoundError,
    default_weights_path,
    load_inception_weights,
    make_random_inception_weights,
    resolve_inception_weights,
    verified_weights_copy,
    weights_fingerprint,
)
from ddpm_unet.metrics.reference_stats import (
    ReferenceSet,
    build_reference_set,
    cache_files,
    reference_cache_name,
    select_indices,
    write_cache_info,
)

__all__ = [
    "FEATURE_EXTRACTOR",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILENAME",
    "INCEPTION_WEIGHTS_URL",
    "InceptionWeightsError",
    "InceptionWeightsNotFoundError",
    "ReferenceSet",
    "UInt8Images",
    "UInt8RGBView",
    "build_reference_set",
    "cache_files",
    "default_weights_path",
    "fidelity_metrics",
    "load_inception_weights",
    "make_random_inception_weights",
    "reference_cache_name",
    "resolve_inception_weights",
    "select_indices",
    "to_rgb",
    "to_uint8",
    "to_uint8_hwc",
    "verified_weights_copy",
    "weights_fingerprint",
    "write_cache_info",
]
