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
import oneplatform.compute.builtin
import oneplatform.compute.images
import oneplatform.dbaas.operations  # noqa: F401
from oneplatform.baremetal.states import NODES
from oneplatform.compute.states import INSTANCES
from oneplatform.dbaas.states import DATABASES
from oneplatform.images.catalog import IMAGES
from oneplatform.statemachine import StateMachine

STATE_MACHINES: tuple[StateMachine[Any], ...] = (INSTANCES, DATABASES, NODES, IMAGES)
