"""Which port forwardings Podman's CNI left behind are stale (the rules as iptables -S
printed them on this machine after a lab run)."""

from oneplatform.compute.drivers.cni import stale_jumps

NEW = "2a8927f2129b73f6e228a6b6b0e3272e22b93619451cf2a3bc5cdc173a5146ca"
OLD = "e477a5cdb6bfff2e8189cf10e6aebf3ff6f796afc7170a4af677f01a752f65fe"
OTHER = "13bc2a057c2517a57d2b304675d68927e0d774d271d26d5df943941c19fb02ed"
NET = "onep-net-4858fc9315c643248b358c5a3ec7f851"


def _jump(cid: str, ports: str, chain: str) -> str:
    return (
        f'-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"{NET}\\" '
        f'id: \\"{cid}\\"" -m multiport --dports {ports} -j {chain}'
    )


RULES = "\n".join(
    [
        "-N CNI-HOSTPORT-DNAT",
        _jump(OTHER, "20008,20009", "CNI-DN-36e24227926e1d9d60418"),
        _jump(OLD, "20006,20007", "CNI-DN-977fafb08e4285b52fec7"),
        _jump(NEW, "20006,20007", "CNI-DN-4eee31f037ecaea6cd9e9"),
    ]
)


def test_another_containers_forwarding_of_our_ports_is_stale() -> None:
    assert stale_jumps(RULES, NEW, [20006, 20007]) == [
        _jump(OLD, "20006,20007", "CNI-DN-977fafb08e4285b52fec7")
    ]


def test_our_own_and_other_ports_forwardings_are_kept() -> None:
    assert stale_jumps(RULES, OTHER, [20008, 20009]) == []
    assert stale_jumps(RULES, NEW, [20010]) == []
    assert stale_jumps(RULES, NEW, []) == []


def test_port_ranges_are_understood() -> None:
    ranged = _jump(OLD, "20000:20010", "CNI-DN-aaaa")
    assert stale_jumps(ranged, NEW, [20006]) == [ranged]
