"""A warm instance's agent: the claim that hands it to its owner, and the sealing that
keeps the owner's bundle secret and whole on the way."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from oneplatform.dbaas.agent_client import AgentClient
from oneplatform.errors import BackendError
from oneplatform.guest.bundle import AdminCredentials, AgentSettings, Bundle
from oneplatform.guest.engines.base import ChildProcesses
from oneplatform.guest.engines.postgresql import PostgresEngine, initial_sql
from oneplatform.guest.http import Agent
from oneplatform.guest.main import _read_bundle
from oneplatform.guest.sealing import SealError, seal, unseal
from tests.unit.test_guest_agent import (
    FakeEngine,
    fast_supervisor,
    make_bundle,
    serve,  # noqa: F401 - the fixture
    wait_for,
)

WARM_ID, WARM_SECRET = "warm-unit", "w" * 43
OWNER_ID, OWNER_SECRET = "owner-unit", "o" * 43


def warm_bundle() -> Bundle:
    return dataclasses.replace(
        make_bundle(),
        instance_id=WARM_ID,
        agent=AgentSettings(secret=WARM_SECRET),
        admin=AdminCredentials("admin", "never-made"),
        warm=True,
    )


def owner_bundle(password: str = "owner-pw") -> Bundle:
    return dataclasses.replace(
        make_bundle(),
        instance_id=OWNER_ID,
        agent=AgentSettings(secret=OWNER_SECRET),
        admin=AdminCredentials("admin", password),
        platform=AdminCredentials("onep_platform", "platform-pw"),
    )


# -- sealing -----------------------------------------------------------------------------------
def test_a_sealed_text_opens_with_its_secret_only() -> None:
    text = owner_bundle().to_json().encode()
    sealed = seal(WARM_SECRET, text)
    assert unseal(WARM_SECRET, sealed) == text
    assert b"owner-pw" not in sealed.encode() and "owner-pw" not in sealed
    assert seal(WARM_SECRET, text) != sealed  # a fresh nonce each time
    with pytest.raises(SealError, match="not sealed with this secret"):
        unseal(OWNER_SECRET, sealed)


@pytest.mark.parametrize("position", [0, 20, -40, -1])
def test_a_changed_byte_anywhere_is_refused(position: int) -> None:
    import base64

    raw = bytearray(base64.urlsafe_b64decode(seal(WARM_SECRET, b"x" * 100)))
    raw[position] ^= 0x01
    with pytest.raises(SealError):
        unseal(WARM_SECRET, base64.urlsafe_b64encode(bytes(raw)).decode())


def test_garbage_is_refused_not_crashed_on() -> None:
    for junk in ("", "not base64 !!", "QUJD"):
        with pytest.raises(SealError):
            unseal(WARM_SECRET, junk)


# -- the claim ---------------------------------------------------------------------------------
def _warm_agent(tmp_path: Path) -> tuple[Agent, FakeEngine]:
    engine = FakeEngine(warm_bundle())
    agent = Agent(
        warm_bundle(),
        fast_supervisor(engine),
        warm=warm_bundle(),
        claimed_path=tmp_path / "claimed-bundle.json",
    )
    return agent, engine


def _payload(bundle: Bundle, initial: dict[str, object] | None = None) -> bytes:
    return json.dumps({"bundle": bundle.to_dict(), "initial": initial}).encode()


def _serve_warm(run: Callable[[Agent], int], tmp_path: Path) -> tuple[int, FakeEngine]:
    """A warm agent on a free port, its engine ready; (port, engine)."""
    agent, engine = _warm_agent(tmp_path)
    port = run(agent)
    wait_for(lambda: AgentClient("127.0.0.1", port, WARM_ID, WARM_SECRET).health().ready)
    return port, engine


def _claim(
    port: int,
    bundle: Bundle,
    secret: str = WARM_SECRET,
    initial: dict[str, object] | None = None,
) -> dict[str, object]:
    client = AgentClient("127.0.0.1", port, WARM_ID, WARM_SECRET)
    return client.claim(seal(secret, _payload(bundle, initial))).raw


def test_a_warm_agent_answers_its_health_and_nothing_else(
    serve: Callable[[Agent], int],  # noqa: F811
    tmp_path: Path,
) -> None:
    port, engine = _serve_warm(serve, tmp_path)
    warm = AgentClient("127.0.0.1", port, WARM_ID, WARM_SECRET)
    assert warm.health().raw["warm"] is True
    assert engine.bootstraps == 1  # the FakeEngine counts calls; the real one makes no role
    with pytest.raises(BackendError) as refused:
        warm.restart_engine(timeout=5)
    assert refused.value.details["agent_code"] == "warm"
    # the owner's secret means nothing yet
    with pytest.raises(BackendError):
        AgentClient("127.0.0.1", port, OWNER_ID, OWNER_SECRET).health()


def test_the_claim_hands_the_instance_to_its_owner_once(
    serve: Callable[[Agent], int],  # noqa: F811
    tmp_path: Path,
) -> None:
    port, engine = _serve_warm(serve, tmp_path)
    warm = AgentClient("127.0.0.1", port, WARM_ID, WARM_SECRET)
    initial = {"databases": ["app"], "users": []}
    answer = _claim(port, owner_bundle(), initial=initial)
    assert answer["instance_id"] == OWNER_ID and answer["warm"] is False
    assert engine.bundle == owner_bundle()  # the engine now runs for the owner
    assert engine.bootstrap_initials == [initial]
    saved = tmp_path / "claimed-bundle.json"
    assert Bundle.from_json(saved.read_bytes()) == owner_bundle()
    assert saved.stat().st_mode & 0o777 == 0o600
    owner = AgentClient("127.0.0.1", port, OWNER_ID, OWNER_SECRET)
    assert owner.health().ready and owner.health().raw["warm"] is False
    with pytest.raises(BackendError) as stale:  # the warm secret opens nothing else now
        warm.health()
    assert stale.value.details["http_status"] in (401, 403)
    # the same claim again (a retried step) is a no-op; another owner's is refused
    assert _claim(port, owner_bundle())["instance_id"] == OWNER_ID
    with pytest.raises(BackendError) as again:
        _claim(port, owner_bundle(password="someone-else"))
    assert again.value.details["agent_code"] == "already_claimed"
    assert Bundle.from_json(saved.read_bytes()) == owner_bundle()


def test_a_claim_not_sealed_with_the_warm_secret_is_refused(
    serve: Callable[[Agent], int],  # noqa: F811
    tmp_path: Path,
) -> None:
    port, _engine = _serve_warm(serve, tmp_path)
    with pytest.raises(BackendError) as refused:
        _claim(port, owner_bundle(), secret=OWNER_SECRET)
    assert refused.value.details["agent_code"] == "bad_claim"
    with pytest.raises(BackendError) as warm_again:  # a warm bundle is no owner's
        _claim(port, dataclasses.replace(owner_bundle(), warm=True))
    assert warm_again.value.details["agent_code"] == "bad_claim"
    assert not (tmp_path / "claimed-bundle.json").exists()


def test_an_agent_restarted_after_its_claim_runs_for_the_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivered = tmp_path / "bundle.json"
    delivered.write_text(warm_bundle().to_json())
    claimed = tmp_path / "claimed-bundle.json"
    monkeypatch.setenv("ONEP_BUNDLE", str(delivered))
    bundle, _problem, warm = _read_bundle(claimed)
    assert bundle == warm_bundle() and warm == warm_bundle()
    claimed.write_text(owner_bundle().to_json())
    bundle, _problem, warm = _read_bundle(claimed)
    assert bundle == owner_bundle() and warm == warm_bundle()
    # a delivered owner's bundle (the instance recreated after its claim) is used as it is
    delivered.write_text(owner_bundle().to_json())
    assert _read_bundle(claimed)[0] == owner_bundle()
    # and the retried claim of the same bundle is still a no-op
    agent = Agent(owner_bundle(), fast_supervisor(None), warm=warm_bundle(), claimed_path=claimed)
    body = json.dumps({"sealed": seal(WARM_SECRET, _payload(owner_bundle()))}).encode()
    from oneplatform.guest.signing import sign_request

    headers = sign_request(WARM_SECRET, WARM_ID, "POST", "/v1/claim", body)
    status, payload = agent.handle("POST", "/v1/claim", headers, body)
    assert status == 200, payload


def test_postgres_is_reconfigured_in_place_when_its_settings_stay(tmp_path: Path) -> None:
    engine = PostgresEngine(warm_bundle(), ChildProcesses(), data_dir=tmp_path)
    (tmp_path / "postgresql.conf").write_text("")
    engine.configure()
    engine.bundle = owner_bundle()
    assert engine.reconfigure() is False  # same flavor: no restart
    engine.bundle = dataclasses.replace(
        owner_bundle(),
        engine=dataclasses.replace(owner_bundle().engine, settings={"work_mem": "8MB"}),
    )
    assert engine.reconfigure() is True
    assert "work_mem = '8MB'" in (tmp_path / PostgresEngine.CONF_NAME).read_text()
    assert os.stat(tmp_path / PostgresEngine.CONF_NAME).st_mode & 0o777 == 0o600


def test_the_claims_initial_databases_and_users_are_made_like_a_cold_creates() -> None:
    script = initial_sql(
        "admin",
        {
            "databases": ["app", "reports"],
            "users": [{"name": "alice", "verifier": "SCRAM-SHA-256$4096:x", "databases": ["app"]}],
        },
    )
    # the first database is the warm instance's spare one, renamed; the others are made
    assert "ALTER DATABASE pg_onep_spare RENAME TO %I', 'app')" in script
    assert "CREATE DATABASE %I', 'reports')" in script
    assert script.count("RENAME") == 1
    assert 'ALTER DATABASE "app" OWNER TO "admin";' in script
    assert 'REVOKE ALL ON DATABASE "reports" FROM PUBLIC;' in script
    assert "ALTER ROLE \"alice\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:x';" in script
    assert 'GRANT CONNECT, CREATE, TEMPORARY ON DATABASE "app" TO "alice";' in script
    connect = script.index('\\connect "app"')
    assert script.index('GRANT USAGE, CREATE ON SCHEMA public TO "alice";') > connect
    assert "reports" not in script[connect:]  # nobody was granted it: no session there
    assert initial_sql("admin", {"databases": [], "users": []}) == ""


def test_a_detached_replica_starts_with_the_bundle_it_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adopted bundle (kept on the data disk at the detach) wins over the delivered one
    while that one is the bundle it replaced; a delivered newer one (the compute re-created
    by the platform, which has the new bundle) is used as it is; a broken file is ignored."""
    group = owner_bundle()
    own = dataclasses.replace(owner_bundle(password="own-pw"), instance_id="db-detached")
    delivered = tmp_path / "bundle.json"
    delivered.write_text(group.to_json())
    adopted = tmp_path / "adopted-bundle.json"
    monkeypatch.setenv("ONEP_BUNDLE", str(delivered))
    assert _read_bundle(tmp_path / "claimed.json", adopted)[0] == group  # none adopted
    adopted.write_text(json.dumps({"replaces": group.instance_id, "bundle": own.to_dict()}))
    assert _read_bundle(tmp_path / "claimed.json", adopted)[0] == own
    other = dataclasses.replace(group, instance_id="db-someone-else")
    delivered.write_text(other.to_json())
    assert _read_bundle(tmp_path / "claimed.json", adopted)[0] == other  # not the replaced one
    delivered.write_text(group.to_json())
    adopted.write_text('{"replaces": "' + group.instance_id + '", "bundle": {"format": 1}}')
    assert _read_bundle(tmp_path / "claimed.json", adopted)[0] == group  # invalid: ignored
