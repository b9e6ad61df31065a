"""Speed and memory of funcbp's training steps: hand VJPs vs autodiff, and peers.

``python -m benchmarks.suite`` (or ``funcbp bench``) runs the whole suite in one process; see
``benchmarks/README.md`` for what each part measures and ``benchmarks/RESULTS.md`` for the
numbers with the machine, versions and load they were measured under.
"""
