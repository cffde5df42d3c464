"""Who else used the GPU while it was timed: the compute processes ``nvidia-smi`` lists on the device.

A GPU shared with another process time-slices between their contexts, so a latency measured then is not
the model's: in issue 8's runs, three pipelines validating at once on one H100 timed a 16x student at
3.9-7.7x its teacher. The validate stage asks after timing each model on a CUDA target and records what it
saw; the report and the speed-up gate's message then say that the timings are not clean.

What ``nvidia-smi`` shows depends on the machine: inside a container it may list host process ids (so this
process is not found by its own id) or nothing at all. This process holds a context on the device when it
asks, so it is one of the listed processes: when its id is not among them, one of them is taken to be it.
An empty list or a failed call is "unknown", never "alone".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

QUERY = "--query-compute-apps=gpu_uuid,pid,process_name,used_memory"


@dataclass(frozen=True)
class GpuProcess:
    """One compute process on the GPU as ``nvidia-smi`` lists it."""

    pid: int
    name: str
    used_mb: float | None


@dataclass(frozen=True)
class GpuUse:
    """The compute processes on one GPU and how many of them are not this process."""

    processes: list[GpuProcess] = field(default_factory=list)
    others: int = 0

    @classmethod
    def merged(cls, uses: list[GpuUse | None]) -> GpuUse | None:
        """What several looks saw together (the most others at once, every process once); None if none saw."""
        known = [u for u in uses if u is not None]
        if not known:
            return None
        procs = {p.pid: p for u in known for p in u.processes}
        return cls(processes=list(procs.values()), others=max(u.others for u in known))

    def to_dict(self) -> dict[str, Any]:
        return {"others": self.others, "processes": [asdict(p) for p in self.processes]}

    def note(self) -> str | None:
        """A sentence for the report when another process shared the GPU, else None."""
        if self.others == 0:
            return None
        listed = ", ".join(f"pid {p.pid} {p.name}" for p in self.processes)
        return (
            f"{self.others} other process{'es' if self.others > 1 else ''} held the GPU while it was timed "
            f"(nvidia-smi: {listed}); its latencies and speed-ups are not clean"
        )


def timing_fields(use: GpuUse | None) -> dict[str, Any]:
    """What a CUDA target's measurements record: ``gpu_use`` (None: nvidia-smi could not say) and, when
    another process shared the GPU, ``timing_note``."""
    out: dict[str, Any] = {"gpu_use": None if use is None else use.to_dict()}
    if use is not None and (note := use.note()):
        out["timing_note"] = note
    return out


def parse_compute_apps(text: str, *, gpu_uuid: str | None, own_pid: int) -> GpuUse | None:
    """``GpuUse`` from ``nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_memory
    --format=csv,noheader,nounits`` output; only the rows of ``gpu_uuid`` when given (with or without
    nvidia-smi's ``GPU-`` prefix). None when no row is left (nothing to go on)."""
    want = None if gpu_uuid is None else gpu_uuid.lower().removeprefix("gpu-")
    procs = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4 or not cells[1].isdigit():
            continue
        uuid, pid, name, mem = cells[0], int(cells[1]), ",".join(cells[2:-1]), cells[-1]
        if want is not None and uuid.lower().removeprefix("gpu-") != want:
            continue
        try:
            used: float | None = float(mem)
        except ValueError:  # "[N/A]" where the driver does not report per-process memory
            used = None
        procs.append(GpuProcess(pid, name, used))
    if not procs:
        return None
    mine = any(p.pid == own_pid for p in procs)
    others = [p for p in procs if p.pid != own_pid]
    return GpuUse(processes=others, others=len(others) if mine else len(procs) - 1)


def _device_uuid(index: int) -> str | None:
    """The UUID of CUDA device ``index`` (this process's numbering), or None without CUDA."""
    try:
        import torch

        return str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # an old torch without .uuid, or no CUDA: the caller reads every GPU's rows
        return None


def gpu_use(device: str | int = "cuda") -> GpuUse | None:
    """The compute processes on a CUDA device (``"cuda"``, ``"cuda:1"`` or an index, in this process's
    numbering), or None when ``nvidia-smi`` is missing, fails, or lists none."""
    device_index = device if isinstance(device, int) else int(device.partition(":")[2] or 0)
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    uuid = _device_uuid(device_index)
    try:
        res = subprocess.run(
            [exe, QUERY, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return parse_compute_apps(res.stdout, gpu_uuid=uuid, own_pid=os.getpid())
