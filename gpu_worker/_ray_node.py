"""``ray start`` for a worker node that joins a head on 127.0.0.1 and stays on loopback.

Run as ``python -m gpu_worker._ray_node --address=127.0.0.1:PORT ...`` (the same
arguments as ``ray start``). Ray 2.x on Linux resolves 127.0.0.1 to the host's
network address, both the head's address and ``--node-ip-address``, unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 -- and with that setting ``ray start --address``
refuses to join any head ("Multi-node Ray clusters are not supported on Windows and
OSX"). This launcher keeps the environment at 0 (so every process the node starts
stays on loopback) and, in its own process only, lets the join through and answers
"which address am I?" with 127.0.0.1 instead of asking the routing table.
"""

from __future__ import annotations

import sys

LOOPBACK = "127.0.0.1"


def _loopback(*_args: object, **_kwargs: object) -> str:
    return LOOPBACK


def main(argv: list[str]) -> None:
    import ray._private.ray_constants as ray_constants
    import ray._private.services as services
    from ray.scripts import scripts

    ray_constants.ENABLE_RAY_CLUSTER = True
    services.node_ip_address_from_perspective = _loopback  # type: ignore[assignment]
    scripts.cli.main(["start", *argv], prog_name="ray")


if __name__ == "__main__":
    main(sys.argv[1:])
