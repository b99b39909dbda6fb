"""OnePlatform: databases as a service on containers, VMs and bare metal."""

__version__ = "0.1.0"
