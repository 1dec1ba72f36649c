"""What the cluster's GCS holds that Ray has no public API for, read in one place."""

from __future__ import annotations

from typing import Any

__all__ = ["ray_state"]


def ray_state() -> Any:
    """Ray's private ``ray._private.state`` module (checked against Ray 2.60.0), the one door to it.

    raymeta reads two things there:

    - ``.state.get_cluster_config()``: the node groups an autoscaler reported to the GCS (their
      resources, ``min_count`` and ``max_count``; :func:`raymeta.cluster.autoscaler_node_types`).
      No public API says what an autoscaler can add: ``ray.nodes()`` and
      ``ray.cluster_resources()`` show only the nodes up, and the autoscaler SDK only requests
      resources. Ray Data and Ray Train read it the same way.
    - ``.actors(actor_id)``: an actor's row in the GCS actor table, its ``State`` and its worker
      ``Pid`` (:func:`raymeta.cluster.actor_states`), to tell an actor still waiting for a node
      from one whose constructor runs. ``ray.util.state.get_actor`` reads the same row, but
      through the dashboard's state API, which a local instance started without a dashboard
      (:func:`raymeta.cluster.connect`) does not serve.

    A Ray without them raises here or on the read: each caller treats that as "cannot tell"."""
    import ray._private.state

    return ray._private.state
