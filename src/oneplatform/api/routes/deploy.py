"""What a node's deploy ramdisk and its BMC fetch, keyed by a per-deploy token.

No bearer token here: a node has nothing but the token in its URL, which is random,
stored hashed, bound to one node and one purpose, and expires.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse

from oneplatform.api.deps import PlatformDep
from oneplatform.baremetal import media

router = APIRouter(prefix="/deploy", tags=["deploy"], include_in_schema=False)
GONE = PlainTextResponse("unknown or expired deploy token\n", status_code=404)


@router.get("/{token}/deploy.iso")
def deploy_iso(token: str, platform: PlatformDep) -> Response:
    path = media.iso_file(platform.store, platform.settings, token)
    if path is None or not path.exists():
        return GONE
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/{token}/manifest")
def manifest(token: str, platform: PlatformDep) -> Response:
    text = media.render_manifest(platform.store, platform.settings, token)
    return GONE if text is None else PlainTextResponse(text)


@router.get("/{token}/image")
def image(token: str, platform: PlatformDep) -> Response:
    """The image's mapped blocks back to back (the manifest's image_map says where each
    run goes); a sync generator, so Starlette streams it from a worker thread."""
    found = media.image_stream(platform.store, platform.settings, token)
    if found is None:
        return GONE
    length, blocks = found
    return StreamingResponse(
        blocks,
        media_type="application/octet-stream",
        headers={"Content-Length": str(length)},
    )


@router.get("/{token}/config")
def config(token: str, platform: PlatformDep) -> Response:
    text = media.bundle_text(platform.store, platform.settings, token)
    return GONE if text is None else PlainTextResponse(text, media_type="application/json")


STATUS_BODY_LIMIT = 16 * 1024


@router.post("/{token}/status")
async def status(token: str, request: Request, platform: PlatformDep) -> Response:
    """A report of the deploy agent: the token is checked before the body is read."""
    if not media.token_is_open(platform.store, token):
        return GONE
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > STATUS_BODY_LIMIT:
            return PlainTextResponse("report too large\n", status_code=413)
    ok = media.record_status(platform.store, platform.settings, token, body)
    return PlainTextResponse("ok\n" if ok else "refused\n", status_code=200 if ok else 404)
