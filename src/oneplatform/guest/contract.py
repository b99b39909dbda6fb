"""The guest contract: what the platform and every datastore image agree on, defined once.

The agent (this package) reads these names; the platform (compute drivers, image builder
and exporters, database service, secrets) imports them from here. The VM init is a shell
script and cannot import them: ``images/recipes/files/onep-vm-init`` repeats them in its
first lines, and ``tests/unit/test_guest_contract.py`` keeps the two equal.

Plain data, standard library only, no I/O.
"""

from __future__ import annotations

# --- the config bundle, as the instance sees it
BUNDLE_GUEST_PATH = "/etc/oneplatform/bundle.json"  # where the agent reads its bundle
CONFIG_DRIVE_BUNDLE = "bundle.json"  # its name at the root of a config drive or partition
CONFIG_DRIVE_HOSTNAME = "hostname"  # beside it, optional: the machine's host name

# --- the agent
AGENT_GUEST_PATH = "/usr/local/lib/oneplatform/agent.pyz"  # the zipapp every image runs
DEFAULT_AGENT_PORT = 8471
DATA_ROOT = "/var/lib/oneplatform"  # the data disk's mount point; engines keep data under it
# A claimed warm instance keeps its owner's bundle on its data disk (root only, 0600): it
# wins over the warm bundle its compute type delivers, at every later start.
CLAIMED_BUNDLE_PATH = DATA_ROOT + "/claimed-bundle.json"
# A replica detached into a database of its own keeps that database's bundle there too, as
# {"replaces": <the bundle's instance_id it replaces>, "bundle": {...}}: it wins over the
# bundle its compute type delivers while that one is still the replaced one.
ADOPTED_BUNDLE_PATH = DATA_ROOT + "/adopted-bundle.json"

# --- the agent's environment: the recipe's [env] and the VM init's ``exec env``
BUNDLE_ENV = "ONEP_BUNDLE"  # another bundle path than BUNDLE_GUEST_PATH (tests)
DATASTORE_ENV = "ONEP_DATASTORE"
DATASTORE_VERSION_ENV = "ONEP_DATASTORE_VERSION"
POWEROFF_ENV = "ONEP_POWEROFF_ON_EXIT"  # "1" (as PID 1 of a VM): power off on exit
# What the agent runs when the image's environment does not say.
DEFAULT_DATASTORE = "postgresql"
DEFAULT_VERSION = "15"

# --- disks. A VM's are virtio disks found by serial; on bare metal the root, config and
# data are partitions of one disk, found by filesystem label.
ROOT_SERIAL = "onep-root"
ROOT_LABEL = "onep-root"  # ext4 root filesystem (root=LABEL= on the kernel command line)
CONFIG_SERIAL = "onep-config"
CONFIG_LABEL = "onep-config"  # volume label of the config drive (ISO 9660 or vfat)
DATA_SERIAL = "onep-data"  # further data disks: onep-data-2, onep-data-3, ...
DATA_LABEL = "onep-data"  # ext4, made by the VM init on a blank data disk

# --- generated passwords: letters and digits without look-alikes, so no quoting trouble
# in SQL, shells, URLs or config files
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PASSWORD_LENGTH = 32
