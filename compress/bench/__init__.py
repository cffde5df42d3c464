"""Benchmarks of loaded sessions: latency percentiles, host and GPU memory, roofline floors, and who else
used the GPU while it was timed."""

from compress.bench.contention import GpuUse as GpuUse
from compress.bench.contention import gpu_use as gpu_use
from compress.bench.contention import timing_fields as timing_fields
from compress.bench.latency import LatencyStats as LatencyStats
from compress.bench.latency import measure_latency as measure_latency
from compress.bench.memory import GpuMemoryProbe as GpuMemoryProbe
from compress.bench.memory import measure_memory as measure_memory
from compress.bench.memory import rss_mb as rss_mb
from compress.bench.roofline import RooflineFloor as RooflineFloor
from compress.bench.roofline import device_rates as device_rates
from compress.bench.roofline import gemm_precision as gemm_precision
from compress.bench.roofline import model_roofline as model_roofline
from compress.bench.roofline import roofline_floor as roofline_floor
from compress.bench.roofline import weight_bytes as weight_bytes
