"""Bare metal: reaching a node's BMC (Redfish now, IPMI later) behind one small interface.

:mod:`~oneplatform.baremetal.bmc` holds the protocol-neutral :class:`~.bmc.Bmc` interface and
its typed records; :mod:`~oneplatform.baremetal.redfish` implements it with ``sushy`` (imported
lazily, so a missing ``sushy`` disables Redfish without breaking the package).
"""
