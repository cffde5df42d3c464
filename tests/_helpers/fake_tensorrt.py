"""A stand-in for the ``tensorrt`` Python module at its API boundary (TensorRT 10/11 names).

It records every call so tests can check what compress asks TensorRT to do: network flags,
builder flags, profiles, workspace, timing cache. It builds no engine: the "plan" is a JSON
description of the build, so tests can read it back.
"""

from __future__ import annotations

import enum
import json
import types
from typing import Any


def make_fake_tensorrt(version: str = "10.9.0", *, parse_ok: bool = True, build_ok: bool = True,
                       input_shape: tuple[int, ...] = (-1, 1, 8, 8)) -> types.ModuleType:
    """A module object that quacks like ``tensorrt``; ``calls`` lists what was done."""
    import importlib.machinery

    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    calls: list[tuple[str, Any]] = []
    trt.calls = calls

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level: str) -> None:
            calls.append(("Logger", level))

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1

    class BuilderFlag(enum.Enum):
        FP16 = "FP16"

    class MemoryPoolType(enum.Enum):
        WORKSPACE = "WORKSPACE"

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs = [Tensor("input", input_shape)]

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.errors = [] if parse_ok else ["In node 3 (QuantizeLinear): unsupported zero point", "second"]

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            return parse_ok

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+t"

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, Any] = {}

        def set_shape(self, name: str, mn: tuple, opt: tuple, mx: tuple) -> None:
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags: list[Any] = []
            self.profiles: list[Profile] = []
            self.pool: dict[Any, int] = {}
            self.cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pool[pool] = size

        def set_flag(self, flag: Any) -> None:
            if version.split(".")[0] >= "11":
                raise AttributeError("BuilderFlag.FP16 was removed in TensorRT 11")
            self.flags.append(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls.append(("create_timing_cache", data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def add_optimization_profile(self, p: Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            calls.append(("build_serialized_network", None))
            if not build_ok:
                return None
            desc = {
                "network_flags": network.flags,
                "builder_flags": [f.value for f in config.flags],
                "workspace": config.pool.get(MemoryPoolType.WORKSPACE),
                "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles],
            }
            return json.dumps(desc).encode()

    for obj in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, OnnxParser, Builder):
        setattr(trt, obj.__name__, obj)
    return trt
