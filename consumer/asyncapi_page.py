"""The AsyncAPI page at /asyncapi, served without internet access.

    python -m consumer.asyncapi_page      # fetch the viewer once (scripts/bootstrap does)

FastStream's own page loads the viewer (@asyncapi/react-component) from unpkg.com and its icons from
asyncapi.com; our machines and many production networks reach neither, so that page stays blank.
This page references nothing outside the consumer: the viewer's standalone bundle and stylesheet
are served at /asyncapi/assets/<version>/..., and the page fetches the document from /asyncapi.json
(FastStream serves it; the committed copy is docs/asyncapi.json).

Downloaded, not committed: the bundle is 3.0 MB of minified code (plus a 24 KB stylesheet). Committed,
every version bump would add 3 MB to the history for good, as a diff nobody can review. Instead the
package tarball of one pinned version is fetched once from the npm registry (2.7 MB; a mirror from
`NPM_CONFIG_REGISTRY`), checked against the sha512 integrity the registry publishes for that
version (pinned below, so a changed tarball is refused) and unpacked into `consumer/asyncapi_assets/`
(gitignored). The version is the one FastStream's page uses, which renders its documents.

Without those files (bootstrap not run, registry unreachable) /asyncapi still answers 200: a page
that says what is missing and shows the document itself. Never a blank page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from faststream.asgi import AsgiResponse, get
from faststream.asgi.types import ASGIApp, Scope

PACKAGE = "@asyncapi/react-component"
VERSION = "3.1.5"
# dist.integrity of that version in the registry's metadata (registry.npmjs.org/<package>/<version>).
INTEGRITY = "sha512-Aq4I++uX6lOWxgBn+D7ly/GXasHjVcORz8eIGii8RgFjZ0i8mDth6LjFHb/yHVr3ANxLFLodXUgwEBhcSvfV/Q=="
REGISTRY = "https://registry.npmjs.org"
# Inside the package, so an installed consumer (the Docker image) finds them as an editable one does.
ASSETS_DIR = Path(__file__).resolve().parent / "asyncapi_assets"
# What is served (name in the tarball -> name served, content type); the licence files are kept beside.
ASSETS = {
    "package/browser/standalone/index.js": ("index.js", "text/javascript; charset=utf-8"),
    "package/styles/default.min.css": ("default.min.css", "text/css; charset=utf-8"),
}
LICENSES = {
    "package/LICENSE": "LICENSE",
    "package/browser/standalone/index.js.LICENSE.txt": "index.js.LICENSE.txt",
}
DOWNLOAD_TIMEOUT_SECONDS = 15.0  # an offline machine should not hold up scripts/bootstrap for long
# The asset URLs carry the version: a browser may keep them for a year.
IMMUTABLE = "public, max-age=31536000, immutable"

# The viewer's options, as FastStream's page sets them.
VIEWER_CONFIG = (
    '{"show": {"sidebar": true, "info": true, "servers": true, "operations": true, "messages": true, '
    '"schemas": true, "errors": true}, "expand": {"messageExamples": true}, '
    '"sidebar": {"showServers": "byDefault", "showOperations": "byDefault"}}'
)
# URLs in the pages are relative ("asyncapi.json" from /asyncapi is /asyncapi.json), so the pages also
# work behind a proxy that serves the consumer under a path prefix.
VIEWER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>AsyncAPI</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{assets}/default.min.css">
<style>html {{ font-family: ui-sans-serif, system-ui, sans-serif; line-height: 1.5; }}</style>
</head>
<body>
<div id="asyncapi"><p>Loading the AsyncAPI document (<a href="{document}">{document}</a>)...</p></div>
<noscript><p>The viewer needs JavaScript. The document: <a href="{document}">{document}</a></p></noscript>
<script src="{assets}/index.js"></script>
<script>
const target = document.getElementById("asyncapi");
fetch("{document}")
  .then((response) => {{
    if (!response.ok) throw new Error("{document} answered " + response.status);
    return response.text();
  }})
  .then((schema) => {{
    document.title = JSON.parse(schema).info.title + " AsyncAPI";
    AsyncApiStandalone.render({{ schema, config: {config} }}, target);
  }})
  .catch((error) => {{ target.textContent = "Could not show {document}: " + error; }});
</script>
</body>
</html>
"""
FALLBACK_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>AsyncAPI</title>
<link rel="icon" href="data:,">
<style>html {{ font-family: ui-sans-serif, system-ui, sans-serif; line-height: 1.5; }}</style>
</head>
<body>
<h1>AsyncAPI document</h1>
<p>The AsyncAPI viewer is not installed on this server, so here is the document itself:
<a href="{document}">{document}</a> (for the default settings it equals <code>docs/asyncapi.json</code>
in the repository). To install the viewer run <code>scripts/bootstrap</code>, or
<code>python -m consumer.asyncapi_page</code>, where the npm registry is reachable.</p>
<pre id="document">Loading {document}...</pre>
<script>
const target = document.getElementById("document");
fetch("{document}")
  .then((response) => response.json())
  .then((schema) => {{ target.textContent = JSON.stringify(schema, null, 2); }})
  .catch((error) => {{ target.textContent = "Could not load {document}: " + error; }});
</script>
</body>
</html>
"""


def asyncapi_page_routes(
    path: str = "/asyncapi", assets_dir: Path | None = None
) -> list[tuple[str, ASGIApp]]:
    """The page at `path` (its document at `path` + ".json") and the viewer's files below it."""
    directory = (assets_dir or ASSETS_DIR) / VERSION
    base = path.rstrip("/")
    name = base.rsplit("/", 1)[-1]  # relative to the page's own URL
    viewer = VIEWER_PAGE.format(
        assets=f"{name}/assets/{VERSION}", document=f"{name}.json", config=VIEWER_CONFIG
    )
    fallback = FALLBACK_PAGE.format(document=f"{name}.json")

    @get(include_in_schema=False)
    async def page(scope: Scope) -> AsgiResponse:
        html = viewer if installed(directory) else fallback
        return AsgiResponse(html.encode(), 200, headers={"content-type": "text/html; charset=utf-8"})

    routes: list[tuple[str, ASGIApp]] = [(base, page)]
    for served, content_type in ASSETS.values():
        routes.append((f"{base}/assets/{VERSION}/{served}", _file(directory / served, content_type)))
    return routes


def installed(directory: Path) -> bool:
    """True when every file the viewer needs is there."""
    return all((directory / served).is_file() for served, _ in ASSETS.values())


def _file(file: Path, content_type: str) -> ASGIApp:
    @get(include_in_schema=False)
    async def serve(scope: Scope) -> AsgiResponse:
        # Read per request: the page is looked at rarely, and 3 MB need not stay in memory meanwhile.
        try:
            content = await asyncio.to_thread(file.read_bytes)
        except FileNotFoundError:
            return AsgiResponse(b"not installed\n", 404, headers={"content-type": "text/plain"})
        return AsgiResponse(content, 200, headers={"content-type": content_type, "cache-control": IMMUTABLE})

    return serve


def tarball_url(registry: str = REGISTRY) -> str:
    """Where the registry keeps the pinned version's package tarball."""
    return f"{registry.rstrip('/')}/{PACKAGE}/-/{PACKAGE.split('/')[1]}-{VERSION}.tgz"


def download(url: str) -> bytes:
    """The body at `url` (https from the npm registry, or the configured mirror)."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:  # noqa: S310  # checked
        body: bytes = response.read()
    return body


def integrity(data: bytes) -> str:
    """The npm (Subresource Integrity) form of the sha512 of `data`."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def install_assets(
    assets_dir: Path | None = None,
    *,
    fetch: Callable[[str], bytes] = download,
    registry: str | None = None,
    expected: str = INTEGRITY,
) -> bool:
    """Fetch, verify and unpack the viewer's files unless they are there; True when it fetched."""
    directory = (assets_dir or ASSETS_DIR) / VERSION
    if installed(directory):
        return False
    data = fetch(tarball_url(registry or os.environ.get("NPM_CONFIG_REGISTRY") or REGISTRY))
    if integrity(data) != expected:
        raise ValueError(
            f"{PACKAGE} {VERSION}: the tarball's sha512 is not the pinned one; nothing installed"
        )
    wanted = {**{member: served for member, (served, _) in ASSETS.items()}, **LICENSES}
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Unpacked next to its place and renamed into it, so a half-written directory is never served.
    staging = Path(tempfile.mkdtemp(prefix=f".{VERSION}-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user (Docker)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.name in wanted and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file
                    (staging / wanted.pop(member.name)).write_bytes(source.read())
        if missing := sorted(set(wanted) - set(LICENSES)):
            raise ValueError(f"{PACKAGE} {VERSION}: the tarball lacks {', '.join(missing)}")
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def main() -> int:
    """Install the viewer's files; one line on stderr when that fails (the page then falls back)."""
    try:
        fetched = install_assets()
    except (OSError, ValueError, tarfile.TarError) as exc:
        print(f"asyncapi_page: error: could not install {PACKAGE} {VERSION}: {exc}", file=sys.stderr)
        return 1
    if fetched:
        print(f"asyncapi_page: installed {PACKAGE} {VERSION} into {ASSETS_DIR / VERSION}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
