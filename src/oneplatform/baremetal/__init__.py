"""Bare metal: whole machines behind a BMC, and everything the platform does with them.

One package, layered inside:

- reaching a machine: :mod:`.bmc` (the protocol-neutral BMC interface and its protocol
  registry), :mod:`.redfish` (Redfish through sushy) and :mod:`.driver` (the compute driver
  every call to a node goes through). None of these touch the store.
- nodes: :mod:`.states` (the node state machine), :mod:`.reach` (finding a node and its
  driver), :mod:`.nodes` (enroll, manage, inspect, provide, power), :mod:`.operations`
  (verify, inspect, clean).
- deploying: :mod:`.deploy_agent` (the busybox agent the ramdisk runs as /init, and its
  protocol with the platform), :mod:`.deploy_iso` (the deploy ramdisk and the per-deploy ISO
  that boots it), :mod:`.ramdisk` (a run of the deploy ramdisk, as steps), :mod:`.media`
  (what the ramdisk and the BMC fetch over HTTP), :mod:`.deploy` (the instance create and
  delete kinds). The whole-disk image the agent writes is an image format:
  :mod:`oneplatform.images.wholedisk`.
- :mod:`.registration`: the bare-metal compute type, registered with the compute layer.
"""
