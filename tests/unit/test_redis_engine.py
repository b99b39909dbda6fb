"""The Redis engine's files, without a server: its config and its ACL file's users."""

from __future__ import annotations

import hashlib
from pathlib import Path

from oneplatform.guest.bundle import AdminCredentials, AgentSettings, Bundle, EngineSettings
from oneplatform.guest.engines.redis import TENANT_RULES, RedisEngine, user_line
from oneplatform.guest.processes import ChildProcesses


def _engine(tmp_path: Path, platform_pw: str = "platform-pw-1") -> RedisEngine:
    bundle = Bundle(
        instance_id="a" * 32,
        datastore="redis",
        version="7.0",
        agent=AgentSettings(secret="s" * 32),
        engine=EngineSettings(port=6379, settings={"maxmemory": "256mb", "port": "1"}),
        admin=AdminCredentials(username="admin", password="admin-pw-1"),
        platform=AdminCredentials(username="onep_platform", password=platform_pw),
    )
    return RedisEngine(bundle, ChildProcesses(), data_dir=tmp_path / "redis")


def _sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def test_an_acl_line_holds_the_passwords_hash_never_the_password() -> None:
    line = user_line("alice", "Alice-pw-1", TENANT_RULES)
    assert line == f"user alice on #{_sha('Alice-pw-1')} ~* &* +@all -@admin"
    assert "Alice-pw-1" not in line


def test_the_config_keeps_what_the_agent_owns(tmp_path: Path) -> None:
    conf = _engine(tmp_path).render_conf()
    assert "maxmemory 256mb" in conf and "\nport 1\n" not in conf  # port is the agent's
    assert "\nappendonly yes\n" in conf and "protected-mode no" in conf
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / RedisEngine.RESTORED_NAME).write_text("x")
    assert "\nappendonly no\n" in _engine(tmp_path).render_conf()  # a restore's first start


def test_a_restore_keeps_the_sources_users_with_its_own_admin_and_platform(
    tmp_path: Path,
) -> None:
    source = "\n".join(
        [
            "user default on nopass ~* +@all",  # never kept: default stays off
            f"user onep_platform on #{_sha('source-platform')} ~* &* +@all",
            f"user admin on #{_sha('source-admin')} {TENANT_RULES}",
            f"user carol on #{_sha('Carol-pw-1')} {TENANT_RULES}",
        ]
    )
    lines = _engine(tmp_path)._users_file(source, with_admin=True).splitlines()
    assert lines[0] == "user default off"
    by_name = {line.split()[1]: line for line in lines}
    assert set(by_name) == {"default", "onep_platform", "admin", "carol"}
    assert _sha("platform-pw-1") in by_name["onep_platform"]
    assert _sha("admin-pw-1") in by_name["admin"]
    assert _sha("Carol-pw-1") in by_name["carol"]


def test_a_start_sets_the_platforms_user_and_leaves_the_admins(tmp_path: Path) -> None:
    """The admin's password may have been changed through the API: a start keeps it."""
    current = "\n".join(
        [
            "user default off",
            f"user onep_platform on #{_sha('old-platform')} ~* &* +@all",
            f"user admin on #{_sha('changed-by-api')} {TENANT_RULES}",
        ]
    )
    lines = _engine(tmp_path, "new-platform")._users_file(current, with_admin=False)
    assert _sha("new-platform") in lines and _sha("old-platform") not in lines
    assert _sha("changed-by-api") in lines and _sha("admin-pw-1") not in lines
