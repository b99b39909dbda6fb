"""One libvirt host as the VM driver uses it: the connection, the storage pool, the volumes.

:meth:`LibvirtSession.call` is the one place where ``libvirtError`` becomes a
:class:`~oneplatform.errors.BackendError`; the driver runs every libvirt call inside it. Files
move in and out of the host only as storage-pool volumes through libvirt streams, so a remote
``qemu+ssh://`` host works like the local one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from oneplatform.compute.drivers.base import HostRef
from oneplatform.compute.drivers.ssh import libvirt_uri
from oneplatform.compute.drivers.vm_domain import pool_xml, volume_xml
from oneplatform.errors import BackendError, BackendNotFound, BackendUnavailable

DEFAULT_POOL = "oneplatform"
DEFAULT_POOL_PATH = "/var/lib/oneplatform/libvirt"
REFRESH_BUSY_TIMEOUT_S = 60.0  # how long a pool refresh waits out libvirt's volume jobs


def libvirt_binding_available() -> bool:
    """Whether libvirt-python can be imported (without importing it)."""
    return importlib.util.find_spec("libvirt") is not None


_libvirt_module: Any = None


def libvirt_module() -> Any:
    """The libvirt binding, imported on first use; its stderr error printing is silenced."""
    global _libvirt_module
    if _libvirt_module is None:
        try:
            import libvirt
        except ImportError as exc:
            raise BackendUnavailable(
                "libvirt-python is not installed: the VM driver is disabled"
            ) from exc
        # libvirt prints every error to stderr by default; ours are raised instead.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _libvirt_module = libvirt
    return _libvirt_module


class LibvirtSession:
    """The connection to ``host.uri`` (opened on first use, reopened if it died) and the
    storage pool (``host.settings["storage_pool"]`` at ``["storage_path"]``)."""

    def __init__(self, host: HostRef) -> None:
        self.host = host  # no I/O here
        self._connection: Any = None
        self._pool_obj: Any = None

    @contextlib.contextmanager
    def call(self, what: str, **details: Any) -> Iterator[None]:
        """Run libvirt calls; the one place ``libvirtError`` becomes a BackendError.

        BackendNotFound for a missing domain, volume, pool or snapshot; BackendUnavailable
        when the daemon cannot be reached; BackendError with libvirt's message otherwise.
        The libvirt error code is kept in ``details["libvirt_code"]``.
        """
        lv = libvirt_module()
        try:
            yield
        except lv.libvirtError as exc:
            raise self.translate(what, exc, details) from exc

    def translate(self, what: str, exc: Any, details: Mapping[str, Any]) -> BackendError:
        lv = libvirt_module()
        code, domain = exc.get_error_code(), exc.get_error_domain()
        text = (exc.get_error_message() or str(exc)).strip()
        if "virtlogd" in text:
            text += " (is virtlogd running? start it with `virtlogd -d`)"
        message = f"libvirt {what} failed: {text}"
        info = {"host": self.host.name, "libvirt_code": code, **details}
        not_found = {
            lv.VIR_ERR_NO_DOMAIN,
            lv.VIR_ERR_NO_STORAGE_VOL,
            lv.VIR_ERR_NO_STORAGE_POOL,
            lv.VIR_ERR_NO_DOMAIN_SNAPSHOT,
        }
        unreachable = {lv.VIR_ERR_NO_CONNECT, lv.VIR_ERR_INVALID_CONN, lv.VIR_ERR_AUTH_FAILED}
        if code in not_found:
            return BackendNotFound(message, **info)
        if code in unreachable or (
            code in {lv.VIR_ERR_SYSTEM_ERROR, lv.VIR_ERR_RPC}
            and domain in {lv.VIR_FROM_RPC, lv.VIR_FROM_REMOTE}
        ):
            return BackendUnavailable(message, **info)
        return BackendError(message, **info)

    def is_code(self, exc: BackendError, code_name: str) -> bool:
        return bool(exc.details.get("libvirt_code") == getattr(libvirt_module(), code_name))

    def conn(self) -> Any:
        """The connection to ``host.uri``, opened (or reopened if it died) on demand."""
        if self._connection is not None:
            with contextlib.suppress(BackendError), self.call("check connection"):
                if self._connection.isAlive():
                    return self._connection
        uri = libvirt_uri(self.host)  # raises HostKeyUnknown for an untrusted SSH host
        try:
            with self.call("connect", uri=self.host.uri):
                self._connection = libvirt_module().open(uri)
        except BackendError as exc:
            raise BackendUnavailable(exc.message, **exc.details) from exc
        self._pool_obj = None
        return self._connection

    # ------------------------------------------------------------------ storage

    @property
    def pool_name(self) -> str:
        return str(self.host.settings.get("storage_pool", DEFAULT_POOL))

    def pool(self) -> Any:
        """The storage pool, made if missing: define, build, start, autostart (idempotent)."""
        if self._pool_obj is not None:
            return self._pool_obj
        conn = self.conn()
        pool = self.lookup(lambda: conn.storagePoolLookupByName(self.pool_name), "pool")
        if pool is None:
            path = str(self.host.settings.get("storage_path", DEFAULT_POOL_PATH))
            try:
                with self.call("define storage pool", pool=self.pool_name):
                    pool = conn.storagePoolDefineXML(pool_xml(self.pool_name, path), 0)
            except BackendError as exc:  # a concurrent caller defined it first
                if "already exists" not in exc.message:
                    raise
                pool = conn.storagePoolLookupByName(self.pool_name)
        with self.call("build storage pool", pool=self.pool_name):
            if not pool.isActive():
                pool.build(0)  # makes the directory; harmless when it exists
        try:
            with self.call("start storage pool", pool=self.pool_name):
                if not pool.isActive():
                    pool.create(0)
        except BackendError:
            with self.call("start storage pool", pool=self.pool_name):
                if not pool.isActive():  # else a concurrent caller started it
                    raise
        with self.call("set storage pool autostart", pool=self.pool_name):
            if not pool.autostart():
                pool.setAutostart(1)
        self._pool_obj = pool
        return pool

    def pool_path(self) -> str:
        root = ET.fromstring(self.pool().XMLDesc(0))
        return str(root.findtext("target/path") or DEFAULT_POOL_PATH)

    def lookup(self, fn: Callable[[], Any], what: str) -> Any | None:
        """``fn()``, or None when libvirt says the object does not exist."""
        try:
            with self.call(f"look up {what}"):
                return fn()
        except BackendNotFound:
            return None

    def vol(self, name: str) -> Any | None:
        pool = self.pool()
        return self.lookup(lambda: pool.storageVolLookupByName(name), f"volume {name}")

    def refresh(self) -> None:
        """Rescan the pool directory for files libvirt did not make (virtlogd, snapshots).

        libvirt refuses while the pool "has asynchronous jobs running" (a volume being
        built): that is waited out for up to REFRESH_BUSY_TIMEOUT_S.
        """
        pool = self.pool()
        deadline = time.monotonic() + REFRESH_BUSY_TIMEOUT_S
        while True:
            try:
                with self.call("refresh storage pool", pool=self.pool_name):
                    pool.refresh(0)
                return
            except BackendError as exc:
                if "asynchronous jobs" not in exc.message or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def create_volume(self, name: str, fmt: str, capacity: int, backing: Any = None) -> Any:
        xml = volume_xml(name, fmt, capacity, None if backing is None else backing.path())
        with self.call("create volume", volume=name):
            return self.pool().createXML(xml, 0)

    def ensure_volume(self, name: str, fmt: str, capacity: int, backing: Any = None) -> Any:
        """The volume ``name``, created unless it exists (an existing one is kept as is)."""
        vol = self.vol(name)
        if vol is not None:
            return vol
        try:
            return self.create_volume(name, fmt, capacity, backing)
        except BackendError as exc:  # a concurrent create made it in between
            if "already" not in exc.message or (vol := self.vol(name)) is None:
                raise
            return vol

    def upload(self, name: str, source: Path) -> Any:
        """Create volume ``name`` from the local file ``source``; removed again on failure."""
        size = source.stat().st_size
        vol = self.create_volume(name, "raw", size)  # libvirt re-probes the format after
        conn = self.conn()
        stream = conn.newStream(0)
        try:
            with self.call("upload volume", volume=name), source.open("rb") as f:
                vol.upload(stream, 0, size, 0)
                stream.sendAll(lambda _st, n, fh: fh.read(n), f)
                stream.finish()
        except BaseException:
            with contextlib.suppress(Exception):
                stream.abort()
            with contextlib.suppress(Exception):
                vol.delete(0)
            raise
        return vol

    def download(self, vol: Any, what: str) -> bytes:
        """The whole content of ``vol`` through a libvirt stream."""
        chunks: list[bytes] = []
        stream = self.conn().newStream(0)
        try:
            with self.call(f"download {what}"):
                vol.download(stream, 0, 0, 0)
                stream.recvAll(lambda _st, data, acc: acc.append(data), chunks)
                stream.finish()
        except BaseException:
            with contextlib.suppress(Exception):
                stream.abort()
            raise
        return b"".join(chunks)

    def delete_volume(self, name: str) -> None:
        """Delete volume ``name``; silent if it does not exist."""
        vol = self.vol(name)
        if vol is None:
            return
        try:
            with self.call("delete volume", volume=name):
                vol.delete(0)
        except BackendNotFound:
            return
