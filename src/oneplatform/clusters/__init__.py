"""Clusters: container pools of one project composed from the platform's own VMs.

A cluster's nodes are compute instances of its owner's project built from the
``podman-host`` image (Podman, sshd); each node, once it answers, is registered as a host of
the cluster's own container pool, and the cluster's flavor (``<name>.small``) places
containers (databases) there only. The owner reaches each node's Podman over SSH
(``onep cluster connect``). See docs/clusters.md.
"""
