"""One guest contract (oneplatform/guest/contract.py) for the agent, the platform and the
shell scripts that cannot import it: the scripts are read here and held to it."""

from __future__ import annotations

import re
from pathlib import Path

from oneplatform import secrets
from oneplatform.baremetal import deploy_agent
from oneplatform.compute.drivers import base, vm_domain
from oneplatform.dbaas import reach
from oneplatform.guest import bundle, contract
from oneplatform.images import builder, wholedisk
from oneplatform.images.recipes import load_recipe

VM_INIT = Path(builder.__file__).with_name("recipes") / "files" / "onep-vm-init"
# The script's own names for the contract's values, in its contract block.
VM_INIT_NAMES = {
    "BUNDLE_PATH": contract.BUNDLE_GUEST_PATH,
    "CONFIG_BUNDLE": contract.CONFIG_DRIVE_BUNDLE,
    "CONFIG_HOSTNAME": contract.CONFIG_DRIVE_HOSTNAME,
    "DATA_DIR": contract.DATA_ROOT,
    "ROOT_SERIAL": contract.ROOT_SERIAL,
    "CONFIG_SERIAL": contract.CONFIG_SERIAL,
    "CONFIG_LABEL": contract.CONFIG_LABEL,
    "DATA_SERIAL": contract.DATA_SERIAL,
    "DATA_LABEL": contract.DATA_LABEL,
    "POWEROFF_ENV": contract.POWEROFF_ENV,
}


def script_lines(text: str) -> list[str]:
    """The script's code lines: no comments, no blank lines."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_vm_init_sets_the_contract_s_values() -> None:
    assignments = dict(
        line.split("=", 1)
        for line in script_lines(VM_INIT.read_text())
        if re.fullmatch(r"[A-Z_]+=\S+", line)
    )
    assert {name: assignments.get(name) for name in VM_INIT_NAMES} == VM_INIT_NAMES
    assert assignments["BUNDLE_DIR"] == '"${BUNDLE_PATH%/*}"'


def test_the_vm_init_uses_its_contract_names_and_no_copies() -> None:
    values = set(VM_INIT_NAMES.values()) - {"hostname"}  # also a shell variable's name
    lines = script_lines(VM_INIT.read_text())
    body = [line for line in lines if line.split("=")[0] not in VM_INIT_NAMES]
    for line in body:
        words = set(re.findall(r"(?<![\w/.-])[\w./-]+(?![\w-])", line))
        assert not words & values, f"a contract value written out instead of its name: {line}"
    code = "\n".join(body)
    for name in VM_INIT_NAMES:
        assert re.search(rf"\${name}\b", code), f"{name} is never used"
    assert 'exec env -i PATH="$PATH" HOME=/root TERM=linux "$POWEROFF_ENV=1" "$@"' in code


def test_the_recipe_follows_the_contract() -> None:
    recipe = load_recipe("postgresql-15")
    assert recipe.command == ("/usr/bin/python3", contract.AGENT_GUEST_PATH)
    assert contract.AGENT_GUEST_PATH in recipe.files
    assert recipe.ports["agent"] == contract.DEFAULT_AGENT_PORT
    assert recipe.env[contract.DATASTORE_ENV] == contract.DEFAULT_DATASTORE
    assert recipe.env[contract.DATASTORE_VERSION_ENV] == contract.DEFAULT_VERSION
    assert recipe.env["PGDATA"].startswith(contract.DATA_ROOT + "/")


def test_the_platform_uses_the_contract() -> None:
    assert base.BUNDLE_GUEST_PATH == contract.BUNDLE_GUEST_PATH
    assert reach.DATA_PATH == contract.DATA_ROOT
    assert (vm_domain.SERIAL_ROOT, vm_domain.SERIAL_CONFIG, vm_domain.SERIAL_DATA) == (
        contract.ROOT_SERIAL,
        contract.CONFIG_SERIAL,
        contract.DATA_SERIAL,
    )
    assert vm_domain.data_serial(1) == f"{contract.DATA_SERIAL}-2"
    assert vm_domain.CONFIG_VOLUME_ID == contract.CONFIG_LABEL
    assert vm_domain.CONFIG_FILE == contract.CONFIG_DRIVE_BUNDLE
    assert (builder.ROOT_SERIAL, builder.CONFIG_SERIAL, builder.DATA_SERIAL) == (
        contract.ROOT_SERIAL,
        contract.CONFIG_SERIAL,
        contract.DATA_SERIAL,
    )
    assert (builder.ROOT_LABEL, builder.CONFIG_LABEL, builder.DATA_LABEL) == (
        contract.ROOT_LABEL,
        contract.CONFIG_LABEL,
        contract.DATA_LABEL,
    )
    assert f"root=LABEL={contract.ROOT_LABEL}" in builder.VM_CMDLINE.split()
    assert wholedisk.CONFIG_LABEL == contract.CONFIG_LABEL


def test_the_deploy_agent_writes_the_bundle_where_the_vm_init_reads_it() -> None:
    script = deploy_agent.agent_script()
    assert f"cp /tmp/bundle.json /mnt/config/{contract.CONFIG_DRIVE_BUNDLE} " in script
    assert f">/mnt/config/{contract.CONFIG_DRIVE_HOSTNAME} " in script
    assert "@" not in "".join(re.findall(r"/mnt/config/\S*", script))


def test_generated_passwords_use_the_contract_s_alphabet() -> None:
    for generate in (secrets.generate_password, bundle.generate_password):
        passwords = {generate() for _ in range(20)}
        assert len(passwords) == 20
        for password in passwords:
            assert len(password) == contract.PASSWORD_LENGTH
            assert set(password) <= set(contract.PASSWORD_ALPHABET)
    assert len(secrets.generate_password(40)) == len(bundle.generate_password(40)) == 40
