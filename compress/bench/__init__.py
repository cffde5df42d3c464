"""Benchmarks of loaded sessions: latency percentiles and host memory."""

from compress.bench.latency import LatencyStats as LatencyStats
from compress.bench.latency import measure_latency as measure_latency
from compress.bench.memory import measure_memory as measure_memory
from compress.bench.memory import rss_mb as rss_mb
