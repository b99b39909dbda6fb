"""Guest agent: request signing and verification, and the config bundle format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    BundleError,
    EngineSettings,
    generate_password,
    generate_secret,
)
from oneplatform.guest.signing import (
    AuthError,
    RequestVerifier,
    canonical_request,
    compute_signature,
    sign_request,
)

SECRET = "s" * 43
INSTANCE = "inst-0001"
NOW = 1_800_000_000.0


def verifier(now: float = NOW) -> RequestVerifier:
    return RequestVerifier(SECRET, INSTANCE, clock=lambda: now)


def refused(
    v: RequestVerifier, headers: dict[str, str], method: str = "GET", path: str = "/v1/health"
) -> AuthError:
    with pytest.raises(AuthError) as info:
        v.verify(method, path, headers, b"")
    return info.value


def test_sign_and_verify_roundtrip() -> None:
    headers = sign_request(SECRET, INSTANCE, "post", "/v1/engine/restart?x=1", b"{}", now=NOW)
    assert set(headers) == {
        "X-Onep-Instance",
        "X-Onep-Timestamp",
        "X-Onep-Nonce",
        "X-Onep-Signature",
    }
    assert headers["X-Onep-Timestamp"] == str(int(NOW))
    assert len(headers["X-Onep-Nonce"]) >= 16
    verifier().verify("POST", "/v1/engine/restart?x=1", headers, b"{}")


def test_signature_is_the_documented_hmac() -> None:
    import hashlib
    import hmac

    headers = sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW, nonce="ab" * 8)
    message = "\n".join(
        ["GET", "/v1/health", INSTANCE, str(int(NOW)), "ab" * 8, hashlib.sha256(b"").hexdigest()]
    )
    expected = hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert headers["X-Onep-Signature"] == expected
    canonical = canonical_request("GET", "/v1/health", INSTANCE, str(int(NOW)), "ab" * 8, b"")
    assert compute_signature(SECRET, canonical) == expected


def test_header_names_are_case_insensitive() -> None:
    headers = sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW)
    verifier().verify("GET", "/v1/health", {k.lower(): v for k, v in headers.items()}, b"")


@pytest.mark.parametrize("drop", ["X-Onep-Instance", "X-Onep-Signature", "X-Onep-Nonce", "all"])
def test_unsigned(drop: str) -> None:
    headers = sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW)
    headers = {} if drop == "all" else {k: v for k, v in headers.items() if k != drop}
    error = refused(verifier(), headers)
    assert (error.status, error.code) == (401, "unsigned")


def test_wrong_instance() -> None:
    headers = sign_request(SECRET, "another-instance", "GET", "/v1/health", now=NOW)
    error = refused(verifier(), headers)
    assert (error.status, error.code) == (403, "wrong_instance")


@pytest.mark.parametrize("offset", [-301, 301, -10_000])
def test_stale(offset: int) -> None:
    headers = sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW + offset)
    error = refused(verifier(), headers)
    assert (error.status, error.code) == (401, "stale")


@pytest.mark.parametrize("offset", [-300, 300])
def test_skew_within_the_window_is_accepted(offset: int) -> None:
    verifier().verify(
        "GET",
        "/v1/health",
        sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW + offset),
        b"",
    )


def test_bad_signature_with_another_secret() -> None:
    headers = sign_request("x" * 43, INSTANCE, "GET", "/v1/health", now=NOW)
    error = refused(verifier(), headers)
    assert (error.status, error.code) == (401, "bad_signature")


def test_replayed() -> None:
    v = verifier()
    headers = sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW)
    v.verify("GET", "/v1/health", headers, b"")
    error = refused(v, headers)
    assert (error.status, error.code) == (401, "replayed")
    # Another nonce is fine again.
    v.verify("GET", "/v1/health", sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW), b"")


def test_a_replay_with_an_invalid_signature_does_not_burn_the_nonce() -> None:
    v = verifier()
    headers = sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW)
    forged = {**headers, "X-Onep-Signature": "0" * 64}
    assert refused(v, forged).code == "bad_signature"
    v.verify("GET", "/v1/health", headers, b"")


def test_nonces_are_forgotten_after_the_window() -> None:
    clock = [NOW]
    v = RequestVerifier(SECRET, INSTANCE, clock=lambda: clock[0])
    headers = sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW)
    v.verify("GET", "/v1/health", headers, b"")
    clock[0] = NOW + 302
    # Forgotten, yet a replay is still refused: by the timestamp now.
    assert refused(v, headers).code == "stale"
    fresh = sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=clock[0])
    v.verify("GET", "/v1/health", fresh, b"")
    assert list(v._nonces) == [fresh["X-Onep-Nonce"]]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/health", b"tampered"),
        ("GET", "/v1/health?extra=1", b""),
        ("GET", "/v1/engine/restart", b""),
        ("POST", "/v1/health", b""),
    ],
)
def test_tampered_request(method: str, path: str, body: bytes) -> None:
    headers = sign_request(SECRET, INSTANCE, "GET", "/v1/health", b"", now=NOW)
    with pytest.raises(AuthError) as info:
        verifier().verify(method, path, headers, body)
    assert (info.value.status, info.value.code) == (401, "bad_signature")


@pytest.mark.parametrize(
    ("header", "value"),
    [("X-Onep-Timestamp", "soon"), ("X-Onep-Timestamp", "-5"), ("X-Onep-Nonce", "short")],
)
def test_malformed_headers(header: str, value: str) -> None:
    headers = {**sign_request(SECRET, INSTANCE, "GET", "/v1/health", now=NOW), header: value}
    assert refused(verifier(), headers).code == "unsigned"


# --- bundle


def make_bundle(**overrides: Any) -> Bundle:
    fields: dict[str, Any] = {
        "instance_id": INSTANCE,
        "datastore": "postgresql",
        "version": "15",
        "agent": AgentSettings(secret=generate_secret()),
        "engine": EngineSettings(port=5432, settings={"shared_buffers": "128MB"}),
        "admin": AdminCredentials(username="admin", password=generate_password()),
    }
    fields.update(overrides)
    return Bundle(**fields)


def test_bundle_roundtrip() -> None:
    bundle = make_bundle()
    text = bundle.to_json()
    data = json.loads(text)
    assert data == {
        "format": 1,
        "instance_id": INSTANCE,
        "datastore": "postgresql",
        "version": "15",
        "agent": {"port": 8471, "secret": bundle.agent.secret},
        "engine": {"port": 5432, "settings": {"shared_buffers": "128MB"}},
        "admin": {"username": "admin", "password": bundle.admin.password},
    }
    assert Bundle.from_json(text) == bundle
    assert Bundle.from_json(text.encode()) == bundle


def test_bundle_repr_hides_the_secrets() -> None:
    bundle = make_bundle()
    assert bundle.agent.secret not in repr(bundle)
    assert bundle.admin.password not in repr(bundle)


def test_bundle_ignores_unknown_keys_and_normalises_settings() -> None:
    data = json.loads(make_bundle().to_json())
    data["from_the_future"] = {"from": "somewhere"}
    data["agent"]["future"] = True
    data["engine"]["settings"] = {"max_connections": 100, "fsync": True}
    bundle = Bundle.from_dict(data)
    assert bundle.engine.settings == {"max_connections": "100", "fsync": "on"}


@pytest.mark.parametrize("fmt", [0, 2, "1", None])
def test_bundle_format_other_than_1_is_an_error(fmt: object) -> None:
    data = json.loads(make_bundle().to_json())
    data["format"] = fmt
    with pytest.raises(BundleError, match="format"):
        Bundle.from_dict(data)


def test_bundle_without_format_is_an_error() -> None:
    data = json.loads(make_bundle().to_json())
    del data["format"]
    with pytest.raises(BundleError, match="format"):
        Bundle.from_dict(data)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("instance_id",), ""),
        (("agent", "secret"), "short"),
        (("agent", "port"), 70000),
        (("engine", "port"), "5432"),
        (("engine", "settings"), {"bad name": "1"}),
        (("engine", "settings"), {"work_mem": "4MB\nlisten_addresses = '*'"}),
        (("admin", "username"), "pg_admin"),
        (("admin", "username"), 'ad"min'),
        (("admin",), None),
    ],
)
def test_bundle_validation(path: tuple[str, ...], value: object) -> None:
    data = json.loads(make_bundle().to_json())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(BundleError):
        Bundle.from_dict(data)


def test_bundle_errors_never_contain_the_secrets() -> None:
    bundle = make_bundle()
    text = bundle.to_json()
    with pytest.raises(BundleError) as info:
        Bundle.from_json(text[:-1])  # truncated JSON
    assert bundle.agent.secret not in str(info.value)
    assert bundle.admin.password not in str(info.value)


def test_generated_secrets_are_long_and_random() -> None:
    assert len(generate_secret()) >= 43
    assert generate_secret() != generate_secret()
    assert len(generate_password()) >= 32
