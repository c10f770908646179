"""`hydra/launcher=ray`: a sweep's jobs as Ray tasks, on a local Ray instance or a cluster.

    murmur -m hydra/launcher=ray seed=range(8)                                   # local Ray
    murmur -m hydra/launcher=ray hydra.launcher.ray.init.address=auto seed=range(100)  # a cluster

A thin launcher over Ray's own API (no pinned Ray version). It lives in Hydra's
`hydra_plugins` namespace package, the only place Hydra looks for launchers; it imports
nothing of murmuration itself.
"""
