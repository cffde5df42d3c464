"""Pipeline configuration: schema, YAML loading with line numbers, error formatting."""

from compress.config.api import (
    LoadedPipeline as LoadedPipeline,
    dump_config as dump_config,
    load_config as load_config,
    load_target as load_target,
)
from compress.config.base import CompressConfig as CompressConfig
from compress.config.schema import TargetConfig as TargetConfig, pipeline_model as pipeline_model
