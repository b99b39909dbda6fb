"""How the platform reaches a database instance: its engine's and agent's endpoints and
credentials, and the config bundle its guest agent boots with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from oneplatform.compute.instances import endpoints
from oneplatform.compute.states import InstanceStatus
from oneplatform.dbaas.agent_client import AgentClient
from oneplatform.dbaas.datastores import Datastore, get_datastore
from oneplatform.dbaas.datastores.base import ConnInfo
from oneplatform.errors import Conflict
from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    EngineSettings,
    RestoreSettings,
    StoreSettings,
    UpstreamSettings,
)
from oneplatform.guest.contract import DATA_ROOT
from oneplatform.secrets import SecretBox
from oneplatform.store.models import DbInstance, Instance

AGENT_ENDPOINT = "agent"
DATA_VOLUME = "data"
DATA_PATH = DATA_ROOT  # where the data volume is mounted in the guest


@dataclass(frozen=True)
class Reach:
    """How the platform reaches one database instance's engine and agent."""

    datastore: Datastore
    engine: ConnInfo  # the platform's own role (the admin's, for instances from before it)
    admin: ConnInfo  # the tenant's admin, as the tenant logs in
    agent_host: str
    agent_port: int
    agent_secret: str
    instance_id: str


def make_bundle(
    instance_id: str,
    datastore: Datastore,
    version: str,
    vcpus: int,
    ram_mb: int,
    admin: AdminCredentials,
    platform: AdminCredentials | None,
    agent_secret: str,
    ports: Mapping[str, int | str],
    *,
    warm: bool = False,
    backup: StoreSettings | None = None,
    restore: RestoreSettings | None = None,
    standby: UpstreamSettings | None = None,
    engine_settings: Mapping[str, str] | None = None,
    configuration: Mapping[str, str] | None = None,
) -> str:
    """The config bundle the guest agent reads; the same whatever the compute type.
    ``ports``: the image's guest ports by endpoint name (the engine's and the agent's);
    ``configuration``: its configuration group's values (they win over the engine's)."""
    return Bundle(
        instance_id=instance_id,
        datastore=datastore.name,
        version=version,
        agent=AgentSettings(secret=agent_secret, port=int(ports[AGENT_ENDPOINT])),
        engine=EngineSettings(
            port=int(ports[datastore.engine_endpoint]),
            settings=engine_settings or datastore.engine_settings(vcpus, ram_mb),
            configuration=configuration or {},
        ),
        admin=admin,
        platform=platform,
        warm=warm,
        backup=backup,
        restore=restore,
        standby=standby,
    ).to_json()


def reach(
    session: Session,
    db: DbInstance,
    box: SecretBox,
    password: str | None = None,
    instance_id: str | None = None,
) -> Reach:
    """Endpoints and credentials of a database instance whose compute instance is placed:
    its primary's, or its member's on ``instance_id``."""
    datastore = get_datastore(db.datastore)
    instance_id = instance_id or db.instance_id
    instance = session.get(Instance, instance_id) if instance_id else None
    if instance is None or instance.host_id is None:
        raise Conflict(
            f"database instance {db.name!r} has no compute instance", code="invalid_state"
        )
    by_name = {e.name: e for e in endpoints(session, instance)}
    if datastore.engine_endpoint not in by_name or AGENT_ENDPOINT not in by_name:
        raise Conflict(  # its ports released: being deleted, or never given
            f"database instance {db.name!r}: its compute instance has no endpoints",
            code="invalid_state",
        )
    engine, agent = by_name[datastore.engine_endpoint], by_name[AGENT_ENDPOINT]
    admin = ConnInfo(
        engine.host, engine.port, db.admin_username, password or box.decrypt(db.admin_password_enc)
    )
    platform = (
        ConnInfo(
            engine.host,
            engine.port,
            datastore.platform_username,
            box.decrypt(db.platform_password_enc),
            act_as=db.admin_username,
        )
        if db.platform_password_enc
        else admin
    )
    return Reach(
        datastore=datastore,
        engine=platform,
        admin=admin,
        agent_host=agent.host,
        agent_port=agent.port,
        agent_secret=box.decrypt(db.agent_secret_enc),
        instance_id=db.id,
    )


def compute_status(session: Session, db: DbInstance) -> InstanceStatus | None:
    instance = session.get(Instance, db.instance_id) if db.instance_id else None
    return InstanceStatus(instance.status) if instance else None


def agent_client(r: Reach, timeout: float = 10.0) -> AgentClient:
    return AgentClient(r.agent_host, r.agent_port, r.instance_id, r.agent_secret, timeout=timeout)
