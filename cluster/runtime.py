"""Where a command's Ray comes from: the cluster in ``RAY_ADDRESS``, or a fresh local one.

A plain ``ray.init()`` also joins any cluster that ``ray start`` left running on this host
(``/tmp/ray/ray_current_cluster``), so without ``RAY_ADDRESS`` every entry point starts its own
instance with ``address="local"``.
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "TINYCOMPRESS_VERBOSE"
"""Set (``tinycompress -v``) to keep Ray's start-up lines and every actor's progress bars."""

QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
"""What the driver and a local instance's actors run with by default: no ``Loading weights``
bars (on a joined cluster the workers keep the environment their nodes were started with)."""


def init_ray(num_cpus: int | None = None, *, log_to_driver: bool = True) -> bool:
    """Join ``RAY_ADDRESS`` (``ray job submit``, a ``ray start`` head, KubeRay) and return True,
    else start an embedded instance with ``num_cpus`` logical CPUs (default: the cores) and
    return False. Quiet unless ``TINYCOMPRESS_VERBOSE`` is set: Ray's INFO lines, its
    token-authentication notice and the actors' progress bars are left out (warnings and
    errors of the actors still reach the terminal)."""
    import ray

    quiet = not os.environ.get(VERBOSE_ENV)
    kwargs: dict = {"log_to_driver": log_to_driver}
    if quiet:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        kwargs["logging_level"] = logging.WARNING  # the local instance's actors inherit os.environ
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
        return True
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
    return False
