"""Ray itself: connecting to a cluster (:mod:`.connect`), what it has and its autoscaler can add
(:mod:`.discovery`), how task actors are sized and placed on it (:mod:`.placement`), and the actors'
state (:mod:`.actors`). What Ray keeps only behind its private API is read in one place
(:mod:`.gcs`).

A package beside :mod:`raymeta.train`, not inside it: :mod:`raymeta.eval` and :mod:`raymeta.tune`
connect to Ray too, and eval never imports train. It imports none of train, eval or tune
(``tests/unit/test_structure.py``).
"""

from .actors import actor_states, get, kill, unplaced
from .connect import LOCAL_NODE_IP, connect, own_instance
from .discovery import ClusterView, NodeType, autoscaler_node_types, cluster_view, node_types_of
from .placement import (
    actor_options,
    bundle_options,
    feasible,
    infeasible,
    placement_error,
    plan_actors,
    request_of,
    task_options,
)
from .tasks import gather

__all__ = ["connect", "actor_options", "bundle_options", "get", "kill", "LOCAL_NODE_IP", "NodeType",
           "ClusterView", "cluster_view", "own_instance", "autoscaler_node_types", "node_types_of",
           "plan_actors", "request_of", "infeasible", "feasible", "actor_states", "unplaced",
           "placement_error", "gather", "task_options"]
