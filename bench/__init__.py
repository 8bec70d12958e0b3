"""Benchmarks (``make bench``): each module runs as ``python -m bench.<name>`` from the repository's root and
prints side-by-side ratios measured on this machine."""
