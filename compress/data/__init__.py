"""Data sources and the shared split machinery.

Every public module in this package other than ``base`` is a data source and is imported here,
which registers it (``SOURCES``). Adding a source is adding a file: a ``DataConfig`` subclass with
``source: Literal["<name>"]`` and a loader decorated with ``register_source``; the pipeline schema
picks it up from the registry.
"""

import importlib
import pkgutil

from compress.data.base import (
    SOURCES as SOURCES,
)
from compress.data.base import (
    DataEnv as DataEnv,
)
from compress.data.base import (
    DataSource as DataSource,
)
from compress.data.base import (
    DataSourceError as DataSourceError,
)
from compress.data.base import (
    TaskData as TaskData,
)
from compress.data.base import (
    data_fingerprint as data_fingerprint,
)
from compress.data.base import (
    load_or_make_splits as load_or_make_splits,
)
from compress.data.base import (
    register_source as register_source,
)
from compress.data.base import (
    stratified_split as stratified_split,
)
from compress.data.base import (
    stratified_subset as stratified_subset,
)

_NOT_SOURCES = {"base"}
for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_") and _m.name not in _NOT_SOURCES:
        importlib.import_module(f"{__name__}.{_m.name}")
