"""The composition root: importing this module assembles the platform.

Every package that registers something is imported here, once: the compute types and their
drivers (containers and VMs from ``compute``, bare metal from ``baremetal``), the BMC
protocols, and every operation kind a worker may be handed. Processes (``onep up``,
``onep worker``) and tests import this module before they serve or run anything.
"""

from __future__ import annotations

from typing import Any

import oneplatform.baremetal.operations
import oneplatform.baremetal.registration
import oneplatform.clusters.operations
import oneplatform.compute.builtin
import oneplatform.compute.images
import oneplatform.dbaas.backup_ops
import oneplatform.dbaas.failover
import oneplatform.dbaas.operations
import oneplatform.dbaas.replicas
import oneplatform.dbaas.storage  # noqa: F401
from oneplatform.baremetal.states import NODES
from oneplatform.clusters.states import CLUSTER_NODES, CLUSTERS
from oneplatform.compute.states import INSTANCES
from oneplatform.dbaas.states import BACKUPS, DATABASES, MEMBERS
from oneplatform.images.catalog import IMAGES
from oneplatform.ops.kinds import all_kinds
from oneplatform.statemachine import StateMachine, render_docs

STATE_MACHINES: tuple[StateMachine[Any], ...] = (
    INSTANCES,
    DATABASES,
    MEMBERS,
    BACKUPS,
    NODES,
    CLUSTERS,
    CLUSTER_NODES,
    IMAGES,
)


def reference_docs() -> str:
    """``docs/states.md``: every state machine and operation kind, as the code defines them."""
    lines = [
        render_docs(STATE_MACHINES),
        "# Operation kinds\n",
        "Every mutating request is one of these; its steps run in order, each once.\n",
        "| kind | resource | intent | steps |",
        "|---|---|---|---|",
    ]
    for kind in all_kinds():
        steps = " → ".join(f"`{name}`" for name in kind.step_names)
        lines.append(f"| `{kind.name}` | {kind.resource_type} | {kind.intent.value} | {steps} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_docs(), end="")
