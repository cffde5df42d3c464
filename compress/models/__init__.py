"""Model families built into compress, and spec-based model save/load."""

from compress.models import external as _external  # noqa: F401  (registers torchvision, timm, hf, factory)
from compress.models import tiny_vit as _tiny_vit  # noqa: F401  (registers the family)
from compress.models.first_token import first_token_last_layer as first_token_last_layer
from compress.models.fused_qkv import fuse_qkv as fuse_qkv
from compress.models.registry import (
    FAMILIES as FAMILIES,
    build_model as build_model,
    load_model as load_model,
    model_from_spec as model_from_spec,
    model_spec as model_spec,
    record_transform as record_transform,
    register_family as register_family,
    register_transform as register_transform,
    save_model as save_model,
)
