"""Where a command's Ray comes from: the cluster in ``RAY_ADDRESS``, or a fresh local one.

A plain ``ray.init()`` also joins any cluster that ``ray start`` left running on this host
(``/tmp/ray/ray_current_cluster``), so without ``RAY_ADDRESS`` every entry point starts its own
instance with ``address="local"``.
"""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None, *, log_to_driver: bool = True) -> bool:
    """Join ``RAY_ADDRESS`` (``ray job submit``, a ``ray start`` head, KubeRay) and return True,
    else start an embedded instance with ``num_cpus`` logical CPUs (default: the cores) and
    return False."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=log_to_driver)
        return True
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             log_to_driver=log_to_driver)
    return False
