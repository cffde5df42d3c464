"""The ``Session`` contract: one way to load and run a deployable model on any runtime.

A *runtime* is a registered ``Session`` subclass (``onnxruntime``, ``torch``, later
``tensorrt``) that can load some artifact formats (``Session.formats``) and run
them on a device. The base class owns every public method: it checks what the
caller passes, calls the subclass's ``_load_impl`` / ``_run_impl`` and checks what
comes back, so every runtime fails the same way on the same mistake. Subclasses
write only the ``_impl`` methods.

Inputs and outputs are described by ``TensorSpec`` (name, shape, dtype). A shape
entry is an ``int`` for a fixed axis and a ``str`` for a symbolic one (``"batch"``);
``"?"`` marks an axis whose size nothing declares. Symbolic names bind across a
call: if the input's axis 0 is ``"batch"`` and equals 32, an output whose axis 0
is ``"batch"`` must also be 32.

Sessions take and return NumPy arrays so timing includes the same host-side
conversions a deployer pays.

Example:
    >>> from compress.runtime import open_session
    >>> sess = open_session("onnxruntime", "model.onnx", threads=2)  # doctest: +SKIP
    >>> [s.name for s in sess.inputs]  # doctest: +SKIP
    ['input']
    >>> logits = sess.run({"input": x})[0]  # doctest: +SKIP
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from compress._utils.registry import Registry
from compress.errors import BadInputError, CompressError, MissingDependency

Device = Literal["cpu", "cuda"]
DEVICES: tuple[str, ...] = ("cpu", "cuda")

Dim = int | str
"""One axis of a ``TensorSpec`` shape: a fixed size or a symbolic name (``"?"``: unknown)."""

UNKNOWN_DIM = "?"


class SessionError(CompressError):
    """A runtime failed while running a loaded model, or returned something malformed (exit 3)."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and element type of one model input or output.

    Attributes:
        name: Tensor name in the model (``input``, ``logits``).
        shape: One entry per axis, ``int`` for fixed sizes and ``str`` for symbolic
            ones; ``None`` when the runtime cannot tell the rank.
        dtype: NumPy dtype name (``float32``, ``int64``...); ``None`` when unknown.
    """

    name: str
    shape: tuple[Dim, ...] | None
    dtype: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for reports and manifests)."""
        return {
            "name": self.name,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
        }


S = TypeVar("S", bound="Session")


class Session(ABC):
    """A model loaded into a runtime, ready to run.

    Create one with ``Session.load`` on a registered subclass (or ``open_session``).
    Subclasses set ``name`` (through ``register_runtime``) and ``formats``, and
    implement ``_can_run_here_impl``, ``_load_impl`` and ``_run_impl``; they may override
    ``synchronize`` and ``_close_impl``.

    Attributes:
        name: Registry name (the deploy target's ``runtime:``).
        formats: Artifact formats this runtime loads (``Artifact.format``: ``onnx``, ``torch``).
        devices: Devices the runtime supports at all (whether one is usable here is
            ``can_run_here``).
        gpu_allocator: Who allocates the model's CUDA memory: ``torch`` (torch's caching
            allocator, so ``torch.cuda.max_memory_allocated`` sees it) or ``external`` (the
            runtime's own allocator; measured as the device's free-memory delta). Read by
            ``compress.bench.GpuMemoryProbe``.
    """

    name: ClassVar[str] = ""
    formats: ClassVar[frozenset[str]] = frozenset()
    devices: ClassVar[frozenset[str]] = frozenset({"cpu"})
    gpu_allocator: ClassVar[str] = "external"

    def __init__(self, *, device: str, threads: int | None, source: str, precision: str | None = None) -> None:
        self._device = device
        self._threads = threads
        self._precision = precision
        self._source = source
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()
        self._input_names: frozenset[str] = frozenset()
        self._input_dtypes: dict[str, np.dtype[Any]] = {}
        self._closed = False

    # ----------------------------------------------------------------- public API

    @classmethod
    def load(
        cls: type[S], source: Any, *, device: str = "cpu", threads: int | None = None, precision: str | None = None
    ) -> S:
        """Load ``source`` into this runtime.

        Args:
            source: What the runtime loads: a file path (``.onnx`` for ONNX Runtime, a
                compress model file for torch) or an in-memory object the runtime
                accepts (an ``nn.Module`` for torch).
            device: ``cpu`` or ``cuda``.
            threads: Intra-op threads (CPU); ``None`` keeps the runtime's default.
            precision: Compute precision for runtimes that choose it at load time (torch:
                ``fp32``, ``fp16``, ``bf16``; torchao: ``int8``); ``None``: the runtime's default.
                Runtimes that run a file as it is (ONNX Runtime, TensorRT) ignore it.

        Returns:
            A ready session.

        Raises:
            BadInputError: Bad ``device`` or ``threads``, or the source cannot be loaded
                (the message names the source and why).
            MissingDependency: The runtime cannot run on ``device`` on this machine
                (package or provider missing, no GPU); the message says what to install.

        Example:
            >>> sess = OrtSession.load("model.onnx", threads=2)  # doctest: +SKIP
        """
        if device not in DEVICES:
            raise BadInputError(f"runtime '{cls.name}': device '{device}' is not one of {', '.join(DEVICES)}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise BadInputError(
                f"runtime '{cls.name}': threads must be a positive integer or None, got {threads!r}"
            )
        ok, reason = cls.can_run_here(device)
        if not ok:
            raise MissingDependency(f"runtime '{cls.name}' cannot run on {device} here: {reason}")
        session = cls(device=device, threads=threads, source=_describe(source), precision=precision)
        try:
            inputs, outputs = session._load_impl(source)
        except CompressError:
            raise
        except Exception as e:  # each backend raises its own types; name the source and the backend's words
            raise BadInputError(
                f"runtime '{cls.name}' cannot load {session._source}: {type(e).__name__}: {e}"
            ) from e
        try:
            session._set_specs(list(inputs), list(outputs))
        except CompressError:
            session.close()
            raise
        return session

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input specs, in the order the model declares them."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Output specs, in the order ``run`` returns them."""
        return self._outputs

    @property
    def device(self) -> str:
        """The device the session runs on (``cpu`` or ``cuda``)."""
        return self._device

    @property
    def threads(self) -> int | None:
        """Intra-op threads requested at load (``None``: the runtime's default)."""
        return self._threads

    @property
    def source(self) -> str:
        """What was loaded, for messages (a path or an object's type)."""
        return self._source

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model once.

        Args:
            inputs: One array per input spec, by name, with the spec's dtype and rank
                and matching every fixed axis.

        Returns:
            One array per output spec, in ``outputs`` order.

        Raises:
            BadInputError: Missing or unexpected names, wrong type, dtype, rank or size.
            SessionError: The session is closed, the runtime failed, or it returned
                something that does not match the output specs.
        """
        if self._closed:
            raise SessionError(f"runtime '{self.name}': session for {self._source} is closed")
        bound = self._check_inputs(inputs)
        try:
            result = self._run_impl(inputs)
        except CompressError:
            raise
        except Exception as e:  # backend-specific failure types; keep its message, name the model
            raise SessionError(
                f"runtime '{self.name}' failed running {self._source}: {type(e).__name__}: {e}"
            ) from e
        self._check_outputs(result, bound)
        return result

    def synchronize(self) -> None:  # noqa: B027  (optional hook: a no-op for synchronous runtimes)
        """Wait until queued device work has finished (no-op on CPU and for synchronous runtimes)."""

    def close(self) -> None:
        """Release the runtime's resources; further ``run`` calls raise ``SessionError``."""
        if not self._closed:
            self._closed = True
            self._close_impl()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._source!r}, device={self._device!r}, threads={self._threads!r})"

    @classmethod
    def can_run_here(cls, device: str = "cpu") -> tuple[bool, str]:
        """Whether this runtime can run on ``device`` on this machine.

        Cheap enough to call before deciding what to measure; it never loads a model.

        Args:
            device: ``cpu`` or ``cuda``.

        Returns:
            ``(True, "")``, or ``(False, reason)`` where the reason says what is missing
            and how to get it (``pip install ...``, no CUDA device...).

        Example:
            >>> ok, why = RUNTIMES.get("onnxruntime").can_run_here("cuda")  # doctest: +SKIP
            >>> ok, why  # doctest: +SKIP
            (False, "ONNX Runtime has no CUDAExecutionProvider here ...")
        """
        if device not in cls.devices:
            return False, (
                f"runtime '{cls.name}' does not support device '{device}' "
                f"(supports: {', '.join(sorted(cls.devices))})"
            )
        return cls._can_run_here_impl(device)

    @classmethod
    def executed_model(cls, model: Any) -> Any:
        """The module whose operations this runtime executes for the torch ``model``, to count its MACs.

        The model itself, unless the runtime rewrites it before running (``torch-compile``'s exact
        inference rewrites skip work the outputs do not need); the roofline floor counts what runs.
        """
        return model

    # ----------------------------------------------------------- subclass hooks

    @classmethod
    @abstractmethod
    def _can_run_here_impl(cls, device: str) -> tuple[bool, str]:
        """Availability check for a ``device`` in ``devices``: package, provider, hardware."""

    @abstractmethod
    def _load_impl(self, source: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Load ``source``; return the input and output specs."""

    @abstractmethod
    def _run_impl(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run on checked inputs; return one array per output spec."""

    def _close_impl(self) -> None:  # noqa: B027  (optional hook, no-op by default)
        """Release backend resources (optional)."""

    # ------------------------------------------------------------------- checks

    def _set_specs(self, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        for kind, specs in (("input", inputs), ("output", outputs)):
            if not specs:
                raise SessionError(f"runtime '{self.name}': {self._source} declares no {kind}s")
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise SessionError(
                    f"runtime '{self.name}': {self._source} has duplicate {kind} names {names}"
                )
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self._input_names = frozenset(s.name for s in inputs)
        # np.dtype objects, because arr.dtype.name builds a string (~6 us per call on the timed path)
        self._input_dtypes = {s.name: np.dtype(s.dtype) for s in inputs if s.dtype is not None}

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
        if not isinstance(inputs, Mapping):
            raise BadInputError(
                f"runtime '{self.name}': inputs must be a dict of name -> numpy array, "
                f"got {type(inputs).__name__}; e.g. {{'{self._inputs[0].name}': x}}"
            )
        if inputs.keys() != self._input_names:
            missing = sorted(self._input_names - inputs.keys())
            extra = sorted(set(inputs) - self._input_names)
            raise BadInputError(
                f"runtime '{self.name}': {self._source}: input names do not match "
                f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}; "
                f"expected: {sorted(self._input_names)})"
            )
        bound: dict[str, int] = {}
        for spec in self._inputs:
            arr = inputs[spec.name]
            if not isinstance(arr, np.ndarray):
                raise BadInputError(
                    f"runtime '{self.name}': input '{spec.name}' must be a numpy array, "
                    f"got {type(arr).__name__}; convert with np.asarray(...) (torch: tensor.numpy())"
                )
            want = self._input_dtypes.get(spec.name)
            if want is not None and arr.dtype != want:
                raise BadInputError(
                    f"runtime '{self.name}': input '{spec.name}' has dtype {arr.dtype.name}; "
                    f"expected {spec.dtype} (cast with x.astype(np.{spec.dtype}))"
                )
            _match_shape(self.name, "input", spec, arr.shape, bound, BadInputError)
        return bound

    def _check_outputs(self, result: object, bound: dict[str, int]) -> None:
        if not isinstance(result, list) or len(result) != len(self._outputs):
            got = f"{len(result)} values" if isinstance(result, list) else type(result).__name__
            raise SessionError(
                f"runtime '{self.name}': {self._source} returned {got}; "
                f"expected a list of {len(self._outputs)} arrays"
            )
        for spec, arr in zip(self._outputs, result, strict=True):
            if not isinstance(arr, np.ndarray):
                raise SessionError(
                    f"runtime '{self.name}': output '{spec.name}' is a {type(arr).__name__}, "
                    "not a numpy array"
                )
            _match_shape(self.name, "output", spec, arr.shape, dict(bound), SessionError, bind_new=False)


def _match_shape(
    runtime: str,
    kind: str,
    spec: TensorSpec,
    shape: tuple[int, ...],
    bound: dict[str, int],
    error: type[CompressError],
    *,
    bind_new: bool = True,
) -> None:
    """Check ``shape`` against ``spec``; bind or check symbolic axes in ``bound``."""
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise error(
            f"runtime '{runtime}': {kind} '{spec.name}' has shape {tuple(shape)} (rank {len(shape)}); "
            f"expected rank {len(spec.shape)}: {_fmt_shape(spec.shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if isinstance(want, int):
            if want != got:
                raise error(
                    f"runtime '{runtime}': {kind} '{spec.name}' has shape {tuple(shape)}; "
                    f"axis {axis} must be {want} (expected {_fmt_shape(spec.shape)})"
                )
        elif want != UNKNOWN_DIM:
            seen = bound.get(want)
            if seen is None:
                if bind_new:
                    bound[want] = got
            elif seen != got:
                raise error(
                    f"runtime '{runtime}': {kind} '{spec.name}' axis {axis} ('{want}') is {got} but '{want}' "
                    f"is {seen} elsewhere in this call"
                )


def _fmt_shape(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _describe(source: Any) -> str:
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        return str(source)
    return f"<{type(source).__name__} object>"


RUNTIMES: Registry[type[Session]] = Registry("runtime")
"""Registered runtimes by name (the deploy target's ``runtime:``)."""


def register_runtime(name: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: register a ``Session`` subclass as runtime ``name`` and set its ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def deco(cls: type[S]) -> type[S]:
        cls.name = name
        RUNTIMES.register(name)(cls)
        return cls

    return deco


def open_session(
    runtime: str, source: Any, *, device: str = "cpu", threads: int | None = None, precision: str | None = None
) -> Session:
    """Load ``source`` into the runtime registered as ``runtime``.

    Args:
        runtime: Registered runtime name (``onnxruntime``, ``torch``).
        source: A path or object that runtime loads (see ``Session.load``).
        device: ``cpu`` or ``cuda``.
        threads: Intra-op threads; ``None`` keeps the runtime's default.
        precision: Compute precision where the runtime chooses it (see ``Session.load``).

    Returns:
        A ready session.

    Raises:
        UnknownNameError: ``runtime`` is not registered (lists the valid names).
        BadInputError: See ``Session.load``.
        MissingDependency: The runtime cannot run on ``device`` here.

    Example:
        >>> with open_session("torch", model, threads=2) as sess:  # doctest: +SKIP
        ...     logits = sess.run({"input": x})[0]
    """
    return RUNTIMES.get(runtime).load(source, device=device, threads=threads, precision=precision)


def list_runtimes(pattern: str = "*") -> list[str]:
    """Names of the registered runtimes matching a glob ``pattern``."""
    return RUNTIMES.names(pattern)
