"""The status page at / loaded in headless Chromium: every certificate and endpoint in the DOM, the timeline
drawn (asserted from the DOM and from the screenshot's pixels), nothing fetched; the listener's basic auth."""

from __future__ import annotations

import base64
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from certkeeper.app import App, build_app
from certkeeper.monitoring.metrics import ListenerSecurity, start_metrics_server
from certkeeper.store import RenewalRecord
from certkeeper.testbed import chromium
from tests.lifecycle_helpers import write_config

CERTIFICATES = '''
[certificates.mail]
issuer = "internal"
domains = ["mail.example.test"]
[certificates.relay]
issuer = "internal"
domains = ["relay.example.test"]
'''
# Nothing listens on port 1: the endpoint is recorded as unreachable.
ENDPOINTS = '''
[[watch]]
name = "partner"
endpoints = ["smtps://127.0.0.1:1"]
'''
GREEN = (0x2E, 0x7D, 0x32)  # the current version's validity bar


@dataclass
class Element:
    tag: str
    attributes: dict[str, str]
    classes: set[str] = field(default_factory=set)


class Collector(HTMLParser):
    """Every element with its attributes, and every URL the document would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self.fetches: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        self.elements.append(Element(tag, attributes, set(attributes.get("class", "").split())))
        if tag in ("script", "link", "img", "iframe") or (tag != "a" and "src" in attributes):
            self.fetches.append(attributes.get("src") or attributes.get("href") or tag)

    def find(self, tag: str, css_class: str | None = None, **attributes: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag and (css_class is None or css_class in e.classes)
                and all(e.attributes.get(k.replace("_", "-")) == v for k, v in attributes.items())]


def pixels_of(png: bytes, colour: tuple[int, int, int]) -> int:
    """How many pixels of the (8-bit RGB or RGBA, non-interlaced) PNG have ``colour``."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks, header = 8, b"", b""
    while offset < len(png):
        (length,), kind = struct.unpack(">I", png[offset:offset + 4]), png[offset + 4:offset + 8]
        data = png[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            chunks += data
        offset += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), header
    size = 3 if colour_type == 2 else 4
    raw, stride, previous, count = zlib.decompress(chunks), width * size, bytearray(width * size), 0
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):  # PNG filters (RFC 2083 section 6)
            left = line[i - size] if i >= size else 0
            up, corner = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        count += sum(1 for x in range(0, stride, size) if tuple(line[x:x + 3]) == colour)
        previous = line
    return count


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """Two certificates (mail renewed three times, one failed attempt, an alert), a watched endpoint down."""
    directory = tmp_path_factory.mktemp("status")
    first = build_app(write_config(directory, CERTIFICATES))
    for _ in range(3):
        assert first.run_pass(["mail"], force=True)[0].result == "renewed"
    assert first.run_pass(["relay"])[0].result == "renewed"
    now = first.clock()
    first.store.add_renewal(RenewalRecord("mail", now, "failure", detail="the CA refused: rate limited"))
    first.store.enqueue_alert("expiry:mail:mail.example.test:x:21d", "WARNING", "mail.example.test expires in 20 days",
                              "", now)
    first.close()
    managed = CERTIFICATES.replace('domains = ["relay.example.test"]',
                                   'domains = ["relay.example.test"]\nendpoints = ["imaps://127.0.0.1:1"]')
    application = build_app(write_config(directory, managed + ENDPOINTS))
    application.observe_endpoints()
    yield application
    application.close()


@pytest.fixture(scope="module")
def url(app: App) -> Iterator[str]:
    server = start_metrics_server("127.0.0.1:0", app.render_metrics, page=app.render_status_page)
    yield f"http://127.0.0.1:{server.port}/"
    server.stop()


def test_every_certificate_and_endpoint_is_in_the_dom_and_the_chart_is_drawn(url: str) -> None:
    dom = Collector()
    dom.feed(chromium.dump_dom(url))
    assert {e.attributes["data-name"] for e in dom.find("section", "certificate")} == {"mail", "relay"}
    assert dom.find("section", "watch", data_name="partner")
    (row,) = dom.find("tr", "endpoint", data_endpoint="smtps://127.0.0.1:1")
    assert row.attributes["data-served"] == "watched" and row.attributes["data-status"] == "CRITICAL"
    (managed,) = dom.find("tr", "endpoint", data_endpoint="imaps://127.0.0.1:1")
    assert managed.attributes["data-served"] == "unreachable"
    (mail,) = dom.find("svg", "timeline", data_certificate="mail")
    assert mail.attributes["width"] == "900"
    assert len(dom.find("g", "validity")) == 4  # mail's three versions and relay's one
    assert len(dom.find("g", "validity", data_current="true")) == 2
    kinds = [e.attributes["data-kind"] for e in dom.find("g", "mark")]
    assert sorted(kinds) == ["alert", "renewal-failure", "renewal-success", "renewal-success", "renewal-success",
                             "renewal-success"]
    assert len(dom.find("rect")) == 4 and len(dom.find("line", "now")) == 2
    assert dom.fetches == [], "the page loads nothing besides itself"


def test_the_screenshot_shows_the_validity_bars(url: str, tmp_path: Path) -> None:
    """Pixels of the current version's green, as the browser painted it: the chart is drawn, not just in the DOM."""
    shot = chromium.screenshot(url, tmp_path / "status.png")
    assert pixels_of(shot.read_bytes(), GREEN) > 2000


def test_next_action_and_last_failure_are_shown(app: App) -> None:
    page = app.render_status_page()
    assert "next: renew at " in page and "the CA refused: rate limited" in page
    assert "mail.example.test expires in 20 days" in page


def test_the_listeners_basic_auth_guards_the_page(app: App, tmp_path: Path) -> None:
    """metrics_basic_auth_file guards / as it guards /metrics: 401 without or with wrong credentials."""
    passwords = tmp_path / "status.users"
    passwords.write_text("# who may look\nops:correct horse\n")
    passwords.chmod(0o600)
    server = start_metrics_server("127.0.0.1:0", app.render_metrics, ListenerSecurity(basic_auth_file=passwords),
                                  page=app.render_status_page)
    base = f"http://127.0.0.1:{server.port}"

    def get(path: str, credentials: str | None = None) -> int:
        request = urllib.request.Request(base + path)
        if credentials:
            request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            error.close()
            return int(error.code)

    try:
        assert get("/") == 401 and get("/", "ops:wrong") == 401 and get("/", "ops:correct horse") == 200
        assert get("/metrics") == 401 and get("/metrics", "ops:correct horse") == 200
    finally:
        server.stop()
