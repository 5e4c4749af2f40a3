"""Events, instrumentation hooks, per-call capture."""
