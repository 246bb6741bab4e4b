"""Measurements of the software: figures, not pass/fail.

Run from the repository root: ``python -m benchmarks.<name>`` (``make bench`` runs build_bench).

    build_bench         make bench: host speed and size ratios of a build's variants, device instructions
    latency_overhead    the latency estimate's own cost (part of make bench)
    photos              decode, cache, memory and training throughput on photo folders
    channel_criteria    which channel importance criterion keeps accuracy
    layer_cost          device cost per layer, from emulated runs of a model's prefixes
"""
