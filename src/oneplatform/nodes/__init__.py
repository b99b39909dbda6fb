"""Bare-metal nodes: enrollment, the node state machine, power, deploy and cleaning."""
