"""Host memory of this process around a piece of work (loading a session and running it).

What the numbers mean, and what they do not:

* ``rss_mb()`` is the process's current resident set size (pages in RAM), read
  from ``/proc/self/statm``. Where ``/proc`` is missing (macOS) it falls back to
  ``resource.getrusage``, which gives the *peak* resident size so far, not the
  current one.
* ``measure_memory(fn)`` reports ``rss_delta_mb``, resident memory after ``fn``
  minus before, i.e. what ``fn`` left resident (a loaded session's weights,
  arena and caches), and ``peak_rss_mb``, the process's highest resident size
  while ``fn`` ran. On Linux the kernel's high-water mark is reset just before
  ``fn`` (``/proc/self/clear_refs``), so the peak covers only ``fn``; where the
  reset is not allowed it is the peak since the process started.

Both are host memory of the whole Python process (GPU memory is not counted),
so they are indicators for comparing artifacts measured the same way, not an
exact footprint: the allocator may reuse memory freed by an earlier model, and
freed memory is not always returned to the OS. MB here is 10^6 bytes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

_MB = 1e6


def rss_mb() -> float:
    """Current resident set size of this process in MB (10^6 bytes).

    Example:
        >>> rss_mb() > 0
        True
    """
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError):
        return _peak_from_rusage()


def _peak_from_rusage() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS
    return peak / _MB if sys.platform == "darwin" else peak * 1024 / _MB


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / _MB
    except (OSError, ValueError, IndexError):
        pass
    return _peak_from_rusage()


def measure_memory(fn: Callable[[], Any]) -> dict[str, float]:
    """Call ``fn()`` and report the host memory it left resident and the peak while it ran.

    Args:
        fn: The work to measure, e.g. load a session and run the largest batch once.
            Keep what must stay alive (the session) referenced from outside ``fn``,
            otherwise it is freed before the second reading.

    Returns:
        ``{"rss_delta_mb": after - before, "peak_rss_mb": highest RSS during fn}`` in MB.

    Example:
        >>> keep = []
        >>> m = measure_memory(lambda: keep.append(bytearray(50_000_000)))
        >>> sorted(m)
        ['peak_rss_mb', 'rss_delta_mb']
    """
    before = rss_mb()
    _reset_peak()
    fn()
    after = rss_mb()
    peak = max(_peak_mb(), after)
    return {"rss_delta_mb": after - before, "peak_rss_mb": peak}


GPU_NOT_APPLICABLE = "not applicable: the target runs on the CPU"


class GpuMemoryProbe:
    """Peak GPU memory of one model on a CUDA device, between ``start()`` and ``stop()``.

    Two methods, picked by who allocates the model's device memory (``Session.gpu_allocator``):

    * ``torch`` (torch, torch-compile, torchao-int8 sessions): ``torch.cuda.reset_peak_memory_stats``
      at ``start``, then ``max_memory_allocated() - memory_allocated() at start``: the most memory
      torch's caching allocator handed out for this model at once (weights, activations, CUDA-graph
      pools), without what other live tensors already held. Method ``torch_max_memory_allocated``.
    * ``external`` (ONNX Runtime's CUDA provider, TensorRT: their own allocators, invisible to torch):
      ``torch.cuda.mem_get_info()`` free bytes at ``start`` minus free bytes at ``stop``, with the
      session still open. ONNX Runtime's arena and TensorRT's workspace keep what they grew to, so
      this is the memory the model holds at its peak; it is device-wide, so other processes on the
      same GPU distort it (run alone). Method ``device_free_delta``.

    On a CPU target, or where CUDA is not available, ``stop()`` returns ``gpu_peak_mb: None`` and a
    ``gpu_method`` that says why: not applicable, never 0. MB is 10^6 bytes.

    Example:
        >>> probe = GpuMemoryProbe("cpu")
        >>> probe.start()
        >>> probe.stop()["gpu_peak_mb"] is None
        True
    """

    def __init__(self, device: str, allocator: str = "torch") -> None:
        self.device = device
        self.allocator = allocator
        self._base: int | None = None

    def _active(self) -> bool:
        if self.device != "cuda":
            return False
        import torch

        return bool(torch.cuda.is_available())

    def start(self) -> None:
        """Take the baseline (resets torch's peak counter for the ``torch`` method)."""
        if not self._active():
            return
        import torch

        torch.cuda.synchronize()
        if self.allocator == "torch":
            self._base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._base = torch.cuda.mem_get_info()[0]

    def stop(self) -> dict[str, Any]:
        """``{"gpu_peak_mb": float | None, "gpu_method": str}`` for the work since ``start``."""
        if self.device != "cuda":
            return {"gpu_peak_mb": None, "gpu_method": GPU_NOT_APPLICABLE}
        if not self._active() or self._base is None:
            return {"gpu_peak_mb": None, "gpu_method": "not measured: torch sees no CUDA device"}
        import torch

        torch.cuda.synchronize()
        if self.allocator == "torch":
            peak = torch.cuda.max_memory_allocated() - self._base
            return {"gpu_peak_mb": max(peak, 0) / _MB, "gpu_method": "torch_max_memory_allocated"}
        used = self._base - torch.cuda.mem_get_info()[0]
        return {"gpu_peak_mb": max(used, 0) / _MB, "gpu_method": "device_free_delta"}
