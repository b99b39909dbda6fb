"""The API serves its contract: schemathesis generates requests from the OpenAPI document
and sends them to the application, as a member and as an admin.

Every answer must be no server error, carry a status the document declares for that route
(with the error schema), and match the declared response schema. The fakes are the default
drivers during the run, so a registered host or a created instance touches no real backend,
and no worker runs: nothing leaves the process. The store is thrown away afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from oneplatform.api.app import create_app
from oneplatform.api.deps import Platform
from oneplatform.baremetal.bmc import register_bmc
from oneplatform.compute.drivers import (
    default_driver,
    register_driver,
    set_default_driver,
    unregister_driver,
)
from oneplatform.config import Settings
from oneplatform.iam import ADMIN, MEMBER, Caller, create_project, ensure_admin
from oneplatform.schemas.compute import ComputeType
from oneplatform.store.db import Store
from oneplatform.store.models import Flavor, Host, Pool
from tests.factories import make_ready_image
from tests.fakes import CLOUD, FakeDriver, FakeVmDriver, fake_bmc_factory

EXAMPLES = 12  # per route and role: enough to hit every refusal, bounded in time
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, dict[str, str]]]:
    """The app on a store of its own, fakes as the default drivers, tokens of both roles."""
    home: Path = tmp_path_factory.mktemp("contract")
    CLOUD.__init__()  # type: ignore[misc]
    defaults = {ct: default_driver(ct) for ct in (ComputeType.CONTAINER, ComputeType.VM)}
    register_driver(ComputeType.CONTAINER, "fake", lambda: FakeDriver, default=True)
    register_driver(ComputeType.VM, "fake", lambda: FakeVmDriver, default=True)
    register_bmc("fake", fake_bmc_factory)
    store = Store(f"sqlite:///{home / 'store.db'}")
    store.migrate()
    settings_ = Settings(home=home, image_cache=home / "images")
    admin_token = ensure_admin(store, None)
    assert admin_token is not None
    admin = Caller("", ADMIN, ADMIN, "bootstrap")
    member_token = create_project(store, admin, "fuzz").token
    with store.session() as session:
        make_ready_image(session)
        pool = Pool(name="containers", compute_type="container", settings={})
        session.add(pool)
        session.flush()
        session.add(
            Host(name="c1", pool_id=pool.id, uri="local://", vcpus=8, ram_mb=8192, disk_gb=100)
        )
        session.add(
            Flavor(name="container.small", compute_type="container", vcpus=1, ram_mb=512, disk_gb=2)
        )
    app = create_app(Platform(store, settings_))
    try:
        yield app, {ADMIN: admin_token, MEMBER: member_token}
    finally:
        for compute_type, name in defaults.items():
            assert name is not None
            set_default_driver(compute_type, name)
            unregister_driver(compute_type, "fake")
        CLOUD.close()
        store.dispose()


def _operations(app: object) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("role", [MEMBER, ADMIN])
def test_the_api_serves_its_contract(role: str, fuzzed: tuple[object, dict[str, str]]) -> None:
    app, tokens = fuzzed
    headers = {"Authorization": f"Bearer {tokens[role]}"}
    failures: dict[str, str] = {}
    operations = _operations(app)
    assert len(operations) > 40  # every documented route is exercised

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            exercise()
        except Exception as exc:  # collect every route's failure, not just the first
            failures[operation.label] = str(exc)[:1500]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
