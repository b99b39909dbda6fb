"""The platform's secret key: made once, the same for every thread and process of a home."""

from __future__ import annotations

import threading
from pathlib import Path

from oneplatform import secrets


def test_threads_making_the_key_at_once_all_get_the_one_that_was_kept(tmp_path: Path) -> None:
    path = tmp_path / "home" / "secret.key"
    boxes: list[secrets.SecretBox] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        try:
            # past the cache: each thread goes through the making of the key itself
            boxes.append(secrets._box_from_file.__wrapped__(path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    sealed = boxes[0].encrypt("s3cret")
    assert all(box.decrypt(sealed) == "s3cret" for box in boxes)
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]  # no temp left
    assert path.stat().st_mode & 0o777 == 0o600
