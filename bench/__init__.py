"""Benchmarks: kernels (ops against their references), later loader and training throughput.

Run `python -m segadapt.bench kernels|report ...`; results land in bench/results/ as one JSON per device.
"""
