"""The AsyncAPI page works without internet: the viewer comes from the consumer, or the page says why not."""

from __future__ import annotations

import io
import re
import tarfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from common.kafka import KafkaConnectionSettings
from consumer import asyncapi_page
from consumer.app import ConsumerApp, create_app
from consumer.asyncapi_page import VERSION, install_assets, installed, integrity
from consumer.settings import ConsumerSettings
from handlers import RulesSettings
from tests.support.broker import free_port

PAGE = "http://consumer/asyncapi"
TARBALL_MEMBERS = {
    "package/browser/standalone/index.js": b"window.AsyncApiStandalone = {render() {}};",
    "package/styles/default.min.css": b".aui-root{color:#000}",
    "package/LICENSE": b"Apache License 2.0",
    "package/browser/standalone/index.js.LICENSE.txt": b"licences of the bundled code",
    "package/package.json": b"{}",
}


class References(HTMLParser):
    """What a browser would load for the page: script sources and linked stylesheets and icons."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        url = named.get("src") if tag == "script" else named.get("href") if tag == "link" else None
        if url:
            self.loads.append(url)


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.loads


def tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def build_app(monkeypatch: pytest.MonkeyPatch, assets_dir: Path) -> ConsumerApp:
    monkeypatch.setattr(asyncapi_page, "ASSETS_DIR", assets_dir)
    # Nothing listens on this port: building the app must not try to connect.
    unreachable = KafkaConnectionSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    return create_app(ConsumerSettings(kafka=unreachable, rules=RulesSettings()))


async def get(app: ConsumerApp, url: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://consumer"
    ) as client:
        return await client.get(url)


@pytest.fixture
def assets_dir(tmp_path: Path) -> Path:
    """A viewer installed as scripts/bootstrap installs it (from a small stand-in tarball)."""
    data = tarball(TARBALL_MEMBERS)
    install_assets(tmp_path, fetch=lambda _url: data, expected=integrity(data))
    return tmp_path


async def test_the_page_loads_its_viewer_and_styles_from_the_consumer_itself(
    monkeypatch: pytest.MonkeyPatch, assets_dir: Path
) -> None:
    app = build_app(monkeypatch, assets_dir)

    page = await get(app, "/asyncapi")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert not re.search(r"https?://", page.text)  # no CDN, no icons from asyncapi.com
    loads = sorted(urlsplit(urljoin(PAGE, url)).path for url in references(page.text) if url != "data:,")
    assert loads == [f"/asyncapi/assets/{VERSION}/default.min.css", f"/asyncapi/assets/{VERSION}/index.js"]
    styles, script = [await get(app, path) for path in loads]
    assert (styles.status_code, styles.headers["content-type"]) == (200, "text/css; charset=utf-8")
    assert (script.status_code, script.headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert script.content == TARBALL_MEMBERS["package/browser/standalone/index.js"]
    assert "immutable" in script.headers["cache-control"]  # the version is in the URL


async def test_the_page_renders_the_document_the_consumer_serves(
    monkeypatch: pytest.MonkeyPatch, assets_dir: Path
) -> None:
    app = build_app(monkeypatch, assets_dir)

    page = await get(app, "/asyncapi")
    [fetched] = re.findall(r'fetch\("([^"]+)"\)', page.text)
    document = await get(app, urlsplit(urljoin(PAGE, fetched)).path)

    assert (document.status_code, document.headers["content-type"]) == (200, "application/json")
    assert document.json()["info"]["title"] == "exam-events consumer"


async def test_without_the_viewer_files_the_page_shows_the_document_instead_of_a_blank_page(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = build_app(monkeypatch, tmp_path / "never-installed")

    page = await get(app, "/asyncapi")
    script = await get(app, f"/asyncapi/assets/{VERSION}/index.js")

    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert "The AsyncAPI viewer is not installed on this server" in page.text
    assert 'href="asyncapi.json"' in page.text
    assert "scripts/bootstrap" in page.text
    assert not re.search(r"https?://", page.text)
    assert [url for url in references(page.text) if url != "data:,"] == []  # nothing that would fail to load
    assert script.status_code == 404


def test_the_viewer_is_the_pinned_version_from_the_npm_registry_or_the_configured_mirror(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data, asked = tarball(TARBALL_MEMBERS), []

    def fetch(url: str) -> bytes:
        asked.append(url)
        return data

    install_assets(tmp_path / "a", fetch=fetch, expected=integrity(data))
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", "https://npm.mirror.example/")
    install_assets(tmp_path / "b", fetch=fetch, expected=integrity(data))

    assert asked == [
        f"https://registry.npmjs.org/@asyncapi/react-component/-/react-component-{VERSION}.tgz",
        f"https://npm.mirror.example/@asyncapi/react-component/-/react-component-{VERSION}.tgz",
    ]


def test_installed_files_are_not_fetched_again(tmp_path: Path) -> None:
    data, fetches = tarball(TARBALL_MEMBERS), []

    def fetch(url: str) -> bytes:
        fetches.append(url)
        return data

    first = install_assets(tmp_path, fetch=fetch, expected=integrity(data))
    second = install_assets(tmp_path, fetch=fetch, expected=integrity(data))

    assert (first, second, len(fetches)) == (True, False, 1)
    assert sorted(p.name for p in (tmp_path / VERSION).iterdir()) == [
        "LICENSE",
        "default.min.css",
        "index.js",
        "index.js.LICENSE.txt",
    ]


def test_a_tarball_that_is_not_the_pinned_one_is_refused_and_nothing_is_installed(tmp_path: Path) -> None:
    tampered = tarball({**TARBALL_MEMBERS, "package/browser/standalone/index.js": b"steal(document.cookie)"})

    with pytest.raises(ValueError, match="sha512"):
        install_assets(tmp_path, fetch=lambda _url: tampered)

    assert not installed(tmp_path / VERSION)
    assert list(tmp_path.iterdir()) == []


def test_a_tarball_without_the_bundle_is_refused_without_leaving_half_an_install(tmp_path: Path) -> None:
    data = tarball({"package/styles/default.min.css": b".aui-root{}"})

    with pytest.raises(ValueError, match=r"lacks package/browser/standalone/index\.js"):
        install_assets(tmp_path, fetch=lambda _url: data, expected=integrity(data))

    assert list(tmp_path.iterdir()) == []


def test_integrity_is_the_npm_form_of_the_sha512() -> None:
    # The form registry.npmjs.org publishes as dist.integrity (here: the well-known one of no bytes).
    assert integrity(b"") == "sha512-" + (
        "z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
    )
