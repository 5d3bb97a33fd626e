"""local_ray_cluster: a head and worker nodes on 127.0.0.1, a raylet killed, all cleaned up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


# 127.0.0.1 as /proc/net/tcp spells it, the same as an IPv4-mapped IPv6 address, and ::1.
LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listening_addresses() -> set[str]:
    """Local addresses of TCP sockets in LISTEN state, on the whole machine."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found.add(fields[1].split(":")[0])
    return found


def test_cluster_starts_nodes_kills_a_raylet_and_cleans_up():
    pytest.importorskip("ray")
    from gpu_worker.ray_local import list_nodes, local_ray_cluster

    before = _listening_addresses()
    with local_ray_cluster([{"gpu_slot": 1}, {"gpu_slot": 1}]) as cluster:
        temp_dir = Path(cluster.temp_dir)
        assert temp_dir.is_dir() and str(temp_dir).startswith("/tmp/")
        nodes = {n["node_id"]: n for n in list_nodes(cluster.dashboard_url)}
        assert len(nodes) == 3 and all(n["state"] == "ALIVE" for n in nodes.values())
        for node in cluster.nodes:
            assert nodes[node.node_id]["resources_total"]["gpu_slot"] == 1.0
            assert nodes[node.node_id]["node_ip"] == "127.0.0.1"
        assert sum("gpu_slot" in n["resources_total"] for n in nodes.values()) == 2
        # Only loopback: no socket listens on a new address (0.0.0.0 would be 00000000).
        assert _listening_addresses() - before <= LOOPBACK_HEX

        victim = cluster.node("worker-1")
        raylet = victim.kill_raylet()
        deadline = time.monotonic() + 90
        while victim.node_id in cluster.alive_node_ids() and time.monotonic() < deadline:
            time.sleep(1)
        assert victim.node_id not in cluster.alive_node_ids()
        assert cluster.node("worker-2").node_id in cluster.alive_node_ids()
        with pytest.raises(ProcessLookupError):
            os.kill(raylet, 0)
        pgids = [n.process.pid for n in cluster.nodes]
    assert not temp_dir.exists()
    for pgid in pgids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
