"""The scheduling core: what the leader decides and from what.

- :mod:`mm.scheduling.snapshot`: the immutable view of the cluster (nodes, residents, workers,
  demand, models) and the actions a plan is made of.
- :mod:`mm.scheduling.reader`: builds a snapshot from Redis; the gateway's status views read the
  same records.
- :mod:`mm.scheduling.policy`: the pure ``plan(snapshot) -> actions`` (loads, unloads, replicas).
- :mod:`mm.scheduling.bindings`: its second half, which model-workers serve which resident model.

The live leader and the discrete-event simulator (``bench/``) call the same ``plan()``.
"""
