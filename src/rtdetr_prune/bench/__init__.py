"""Latency of models timed side by side: PyTorch or ONNX Runtime, CPU or CUDA.

- ``latency``: :func:`bench` and :func:`format_bench`, what ``rtdetr-prune bench`` runs.
- ``timing``: interleaved rounds and their statistics.
- ``onnx``: export, the ONNX-vs-PyTorch output check, ONNX Runtime sessions.
"""

from rtdetr_prune.bench.latency import bench, format_bench

__all__ = ["bench", "format_bench"]
