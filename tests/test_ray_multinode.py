"""A sweep on a real two-node Ray cluster (``ray start`` head + second node on this machine, one
CPU each, token authentication, in a network namespace of its own; ``tests/fixtures/ray_cluster.py``):
with ``ray.address`` at the head, the trials spread over both nodes — their MLflow tag
``rgflow.ray_node_id`` names two distinct nodes, exactly the cluster's — and every run, the parent
included, ends FINISHED. The nodes are stopped by pid, and nothing of them is left."""
from __future__ import annotations

import re

import pytest

from tests.fixtures.netns import ADDRESS
from tests.fixtures.sweep import SMOKE

pytestmark = pytest.mark.slow


def test_trials_spread_over_both_nodes_of_a_real_cluster(ray_cluster, sweep_env):
    nodes = ray_cluster.query_nodes(expect=2)
    assert len(nodes) == 2, (nodes, ray_cluster.logs())
    # the nodes are the two started here: their own node-manager ports and marker resources, 1 CPU each
    by_port = {n["port"]: n for n in nodes}
    assert set(by_port) == {node.ports["node-manager-port"] for node in ray_cluster.nodes}, nodes
    for node in ray_cluster.nodes:
        resources = by_port[node.ports["node-manager-port"]]["resources"]
        assert resources["CPU"] == 1.0 and resources[f"rgflow_test_{node.name}"] == 1.0, resources
    cluster_ids = {n["id"] for n in nodes}

    assert {n["address"] for n in nodes} == {ADDRESS}  # advertised inside the cluster's network namespace only
    sweep_env.env.update(ray_cluster.auth_env)  # the cluster's token: the fixtures' RAY_AUTH_MODE=disabled is refused
    sweep_env.prefix = ray_cluster.prefix  # the driver joins from inside the namespace
    # Two trials (batch 32 and 128, Laplace) of one CPU each, run together: one per node.
    done = sweep_env.run(SMOKE, *sweep_env.overrides("prior.kind=laplace", f"ray.address={ray_cluster.address}",
                                                     "resources.cpus=1",
                                                     "ray.max_concurrent_trials=2", "evaluation.enabled=false"),
                         timeout=240)
    assert done.returncode == 0, f"{done.stderr[-4000:]}\n{ray_cluster.logs()}"
    assert "smoke: 2/2 done" in done.stderr, done.stderr
    driver_log = (sweep_env.runs_dir / "smoke" / "logs" / "driver.log").read_text()
    port = ray_cluster.gcs_port
    assert re.search(rf"sweep smoke: Ray 127\.0\.0\.1:{port} at [0-9.]+:{port}, resources \{{.*'CPU': 2\.0",
                     driver_log), driver_log  # joined the cluster (both nodes' CPUs), no embedded Ray

    trials = sweep_env.trial_runs()
    assert len(trials) == 2
    assert [(r.info.status, r.data.tags["rgflow.state"], r.data.tags["rgflow.backend"]) for r in trials] == \
        [("FINISHED", "finished", "ray")] * 2
    used = {r.data.tags["rgflow.ray_node_id"] for r in trials}
    assert used == cluster_ids, (used, cluster_ids)  # both nodes ran trials, and no other node did
    (parent,) = sweep_env.parent_runs()
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}

    ray_cluster.stop()
    assert all(node.proc.poll() is not None for node in ray_cluster.nodes)
    assert ray_cluster.marked_pids() == []  # no raylet, GCS, agent or worker of the cluster left
