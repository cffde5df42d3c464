"""Data sources and the shared split machinery."""

from compress.data import digits as _digits  # noqa: F401  (registers the source)
from compress.data.base import (
    SOURCES as SOURCES,
    TaskData as TaskData,
    data_fingerprint as data_fingerprint,
    load_or_make_splits as load_or_make_splits,
    stratified_split as stratified_split,
)
