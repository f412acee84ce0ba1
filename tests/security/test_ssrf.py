"""SSRF: callback URLs refused at job creation and re-checked at send time, provider image URLs
fetched only from allowed public hosts, and every connection pinned to the checked address."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from pipeline import urls
from pipeline.services import JobService
from tests.security.conftest import PROMPT, Harness, assert_error, jpeg, success_body

pytestmark = pytest.mark.security

PUBLIC_IP = "93.184.216.34"
OTHER_PUBLIC_IP = "93.184.216.35"
REAL_GETADDRINFO = socket.getaddrinfo

# Each is refused as a callbackURL with 422 naming the field, before anything is written.
REFUSED_CALLBACKS = {
    # loopback, in every spelling a resolver accepts
    "loopback": "http://127.0.0.1/cb",
    "loopback-other": "http://127.8.9.10:8080/cb",
    "loopback-short": "http://127.1/cb",
    "loopback-hex": "http://0x7f000001/cb",
    "loopback-decimal": "http://2130706433/cb",
    "loopback-octal": "http://0177.0.0.1/cb",
    "loopback-v6": "http://[::1]/cb",
    "localhost": "http://localhost/cb",
    "localhost-port": "http://localhost:6379/",
    # private networks
    "private-10": "http://10.0.0.1/cb",
    "private-172": "http://172.16.0.1/cb",
    "private-172-top": "http://172.31.255.254/cb",
    "private-192": "http://192.168.1.1/cb",
    "private-v6-ula": "http://[fd00::1]/cb",
    # link-local and cloud metadata
    "metadata-aws": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "link-local-v6": "http://[fe80::1]/cb",
    "cgnat-metadata": "http://100.100.100.200/latest/meta-data/",
    "cgnat-low": "http://100.64.0.1/cb",
    "cgnat-high": "https://100.127.255.254/cb",
    "unspecified": "http://0.0.0.0/cb",
    "unspecified-short": "http://0/cb",
    "unspecified-v6": "http://[::]/cb",
    # IPv4 hidden in IPv6
    "mapped-loopback": "http://[::ffff:127.0.0.1]/cb",
    "mapped-metadata": "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "mapped-hex": "http://[::ffff:7f00:1]/cb",
    "nat64-loopback": "http://[64:ff9b::7f00:1]/cb",
    "6to4-private": "http://[2002:c0a8:101::1]/cb",
    # other special ranges
    "multicast": "http://224.0.0.1/cb",
    "multicast-v6": "http://[ff02::1]/cb",
    "reserved-240": "http://240.0.0.1/cb",
    "broadcast": "http://255.255.255.255/cb",
    "benchmarking": "http://198.18.0.1/cb",
    "documentation": "http://192.0.2.10/cb",
    # ports
    "port-too-big": "http://93.184.216.34:99999/cb",
    "port-zero": "http://93.184.216.34:0/cb",
    "port-negative": "http://93.184.216.34:-1/cb",
    "port-not-a-number": "http://93.184.216.34:http/cb",
    # schemes
    "file": "file:///etc/passwd",
    "ftp": "ftp://93.184.216.34/cb",
    "gopher": "gopher://127.0.0.1:6379/_FLUSHALL",
    "javascript": "javascript:alert(1)",
    "data": "data:text/plain,hello",
    "dict": "dict://127.0.0.1:11211/stat",
    "no-scheme": "//93.184.216.34/cb",
    # credentials, length, characters
    "credentials": "http://user:secret@93.184.216.34/cb",
    "credentials-user-only": "http://admin@93.184.216.34/cb",
    "credentials-host-confusion": "http://93.184.216.34@127.0.0.1/cb",
    "over-long": "http://93.184.216.34/" + "a" * 2100,
    "crlf": "http://93.184.216.34/cb\r\nX-Injected: 1",
    "newline-in-host": "http://93.184.216.34\n.evil/cb",
    "space": "http://93.184.216.34/c b",
    "tab": "http://93.184.216.34/\tcb",
    "nul": "http://93.184.216.34/cb\x00",
    "no-host": "http:///cb",
}


def resolver(table: dict[str, list[str]]) -> Callable[..., Any]:
    """A getaddrinfo that answers the names in `table` (and falls back to the real one for
    literals and everything else)."""

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in table:
            answers = []
            for address in table[host]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (
                    (address, int(port or 0), 0, 0) if ":" in address else (address, int(port or 0))
                )
                answers.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
            return answers
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    return getaddrinfo


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, list[str]]], None]]:
    """Point names at addresses for the URL checks, as a DNS server (or an attacker's) would."""

    def answer(table: dict[str, list[str]]) -> None:
        monkeypatch.setattr(urls.socket, "getaddrinfo", resolver(table))

    yield answer


def job_body(**fields: Any) -> dict[str, Any]:
    return {"positivePrompt": PROMPT, "width": 1024, "height": 1024, **fields}


# ------------------------------------------------------------------ callbackURL at POST /v1/jobs
@pytest.mark.parametrize("url", list(REFUSED_CALLBACKS.values()), ids=list(REFUSED_CALLBACKS))
def test_callback_url_refused_at_creation(harness: Harness, url: str) -> None:
    before = harness.snapshot()
    answer = harness.api("POST", "/v1/jobs", json=job_body(callbackURL=url))
    body = assert_error(answer, 422, "validation_failed")
    assert set(body["errors"]) == {"callbackURL"}, body
    harness.assert_unchanged(before)


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["169.254.169.254"],
        ["10.1.2.3"],
        [PUBLIC_IP, "127.0.0.1"],
        ["::1", PUBLIC_IP],
    ],
    ids=["loopback", "metadata", "private", "public-and-loopback", "v6-loopback-and-public"],
)
def test_callback_name_resolving_to_a_private_address_refused(
    harness: Harness, dns: Callable[[dict[str, list[str]]], None], addresses: list[str]
) -> None:
    """A public-looking name is judged by every address it resolves to."""
    dns({"hooks.attacker.example": addresses})
    before = harness.snapshot()
    answer = harness.api(
        "POST", "/v1/jobs", json=job_body(callbackURL="https://hooks.attacker.example/cb")
    )
    body = assert_error(answer, 422, "validation_failed")
    assert set(body["errors"]) == {"callbackURL"}, body
    harness.assert_unchanged(before)


def test_callback_name_that_does_not_resolve_refused(harness: Harness) -> None:
    before = harness.snapshot()
    answer = harness.api(
        "POST", "/v1/jobs", json=job_body(callbackURL="https://no-such-host.invalid/cb")
    )
    body = assert_error(answer, 422, "validation_failed")
    assert set(body["errors"]) == {"callbackURL"}, body
    harness.assert_unchanged(before)


def test_callback_header_idempotency_key_does_not_bypass_the_check(harness: Harness) -> None:
    """A refused callback with an idempotency key leaves no key behind either."""
    before = harness.snapshot()
    answer = harness.api(
        "POST",
        "/v1/jobs",
        headers={"Idempotency-Key": "ssrf-1"},
        json=job_body(callbackURL="http://169.254.169.254/"),
    )
    assert_error(answer, 422, "validation_failed")
    harness.assert_unchanged(before)


def test_public_callback_accepted(harness: Harness) -> None:
    """The control: a public literal address passes, so the refusals above are the filter's."""
    answer = harness.api("POST", "/v1/jobs", json=job_body(callbackURL=f"http://{PUBLIC_IP}/cb"))
    assert answer.status_code == 202, answer.get_json()
    assert harness.dispatcher.sent == [("submit", (answer.get_json()["id"],))]


# ------------------------------------------------------------------ callbackURL at send time
def ended_job_with_callback(harness: Harness, url: str) -> str:
    job, created = harness.service.create_job(job_body(callbackURL=url), "acme")
    assert created
    harness.service.cancel_job(job.id, "acme")
    ended = harness.store.get_job(job.id)
    assert ended is not None and ended.terminal
    return job.id


def callbacks_sent(harness: Harness, since: int) -> list[httpx.Request]:
    return harness.outbound.requests[since:]


def test_callback_sent_to_the_checked_literal_address(harness: Harness) -> None:
    job_id = ended_job_with_callback(harness, f"http://{PUBLIC_IP}:8080/hooks/imagine?x=1")
    before = len(harness.outbound.requests)
    assert harness.service.send_callback(job_id) == "sent"
    [sent] = callbacks_sent(harness, before)
    assert sent.method == "POST"
    assert str(sent.url) == f"http://{PUBLIC_IP}:8080/hooks/imagine?x=1"
    assert sent.headers["Host"] == f"{PUBLIC_IP}:8080"
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(sent.headers)
    assert json.loads(sent.content)["data"]["id"] == job_id


def test_callback_pinned_to_the_address_checked_with_host_and_sni_kept(
    harness: Harness, dns: Callable[[dict[str, list[str]]], None]
) -> None:
    dns({"hooks.customer.example": [PUBLIC_IP]})
    job_id = ended_job_with_callback(harness, "https://hooks.customer.example/cb")
    before = len(harness.outbound.requests)
    assert harness.service.send_callback(job_id) == "sent"
    [sent] = callbacks_sent(harness, before)
    assert sent.url.host == PUBLIC_IP and sent.url.scheme == "https"
    assert sent.headers["Host"] == "hooks.customer.example"
    assert sent.extensions.get("sni_hostname") == "hooks.customer.example"


def test_callback_rebinding_between_creation_and_send_refused(
    harness: Harness, dns: Callable[[dict[str, list[str]]], None]
) -> None:
    """The name passed at creation; by send time it points at the metadata service."""
    dns({"hooks.rebind.example": [PUBLIC_IP]})
    job_id = ended_job_with_callback(harness, "http://hooks.rebind.example/cb")
    dns({"hooks.rebind.example": ["169.254.169.254"]})
    before = harness.snapshot()
    assert harness.service.send_callback(job_id) == "refused"
    harness.assert_unchanged(before)


def test_callback_each_send_resolves_once_and_connects_there(
    harness: Harness, dns: Callable[[dict[str, list[str]]], None]
) -> None:
    """A second send after the name moved goes to the new public address, never re-resolved
    between check and connect."""
    dns({"hooks.moving.example": [PUBLIC_IP]})
    job_id = ended_job_with_callback(harness, "http://hooks.moving.example/cb")
    dns({"hooks.moving.example": [OTHER_PUBLIC_IP]})
    before = len(harness.outbound.requests)
    assert harness.service.send_callback(job_id) == "sent"
    [sent] = callbacks_sent(harness, before)
    assert sent.url.host == OTHER_PUBLIC_IP
    assert sent.headers["Host"] == "hooks.moving.example"


@pytest.mark.parametrize(
    "stored",
    [
        "http://127.0.0.1:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/cb",
        "http://93.184.216.34:99999/cb",
        "gopher://93.184.216.34/_x",
        "http://localhost/cb",
    ],
    ids=["redis", "metadata", "cgnat", "mapped-private", "bad-port", "gopher", "localhost"],
)
def test_callback_rewritten_in_the_store_refused_at_send(harness: Harness, stored: str) -> None:
    """An old record, or one changed behind the API's back, is checked again before sending."""
    job_id = ended_job_with_callback(harness, f"http://{PUBLIC_IP}/cb")
    harness.store.set_job_fields(job_id, callback_url=stored)
    stored_job = harness.store.get_job(job_id)
    assert stored_job is not None and stored_job.callback_url == stored
    before = harness.snapshot()
    assert harness.service.send_callback(job_id) == "refused"
    harness.assert_unchanged(before)


# ------------------------------------------------------------------ imageURL fetched by a worker
REFUSED_IMAGE_URLS = {
    "loopback": "http://127.0.0.1/x.jpg",
    "loopback-port": "http://127.0.0.1:6379/x.jpg",
    "localhost": "http://localhost/x.jpg",
    "private": "http://10.0.0.5/x.jpg",
    "private-v6": "http://[fd00::5]/x.jpg",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "cgnat": "http://100.100.100.200/latest/meta-data/",
    "mapped-loopback": "http://[::ffff:127.0.0.1]/x.jpg",
    "public-not-allowed": f"https://{PUBLIC_IP}/x.jpg",
    "other-host": "https://images.attacker.example/x.jpg",
    "suffix-confusion": "https://im.runware.ai.attacker.example/x.jpg",
    "userinfo-confusion": "https://im.runware.ai@127.0.0.1/x.jpg",
    "credentials": "https://user:pw@im.runware.ai/x.jpg",
    "allowed-host-bad-port": "https://im.runware.ai:99999/x.jpg",
    "allowed-host-port-zero": "https://im.runware.ai:0/x.jpg",
    "file": "file:///etc/passwd",
    "ftp": "ftp://im.runware.ai/x.jpg",
    "gopher": "gopher://im.runware.ai/_x",
    "javascript": "javascript:alert(1)",
    "over-long": "https://im.runware.ai/" + "a" * 2100,
    "crlf": "https://im.runware.ai/x.jpg\r\nHost: 127.0.0.1",
    "space": "https://im.runware.ai/x .jpg",
    "non-ascii": "https://im.runw\u0430re.ai/x.jpg",  # a Cyrillic a: a look-alike host
}


def received_with_image_url(harness: Harness, image_url: str) -> tuple[str, str]:
    """A job whose webhook reported `image_url` and whose upload never landed."""
    job_id, task_uuid = harness.submitted_job()
    answer = harness.webhook(task_uuid, success_body(task_uuid, imageURL=image_url))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["results"] == ["received"]
    return job_id, task_uuid


def final_image_keys(harness: Harness, job_id: str) -> list[str]:
    prefix = f"{harness.prefix}jobs/{job_id}/"
    return [
        key
        for key in harness.s3_keys()
        if key.startswith(prefix) and not key.endswith("manifest.json")
    ]


@pytest.mark.parametrize(
    "image_url", list(REFUSED_IMAGE_URLS.values()), ids=list(REFUSED_IMAGE_URLS)
)
def test_image_url_never_fetched_outside_the_allow_list(harness: Harness, image_url: str) -> None:
    job_id, _ = received_with_image_url(harness, image_url)
    before = harness.snapshot()
    outcome = harness.service.promote_slot(job_id, 0, allow_fetch=True)
    assert outcome in {"rejected", "missing"}, outcome
    assert harness.snapshot()["outbound"] == before["outbound"], "an image fetch was sent"
    assert final_image_keys(harness, job_id) == []
    slot = harness.store.get_slot(job_id, 0)
    assert slot is not None and slot.state != "stored"
    if outcome == "missing":  # the URL was never kept: the slot waits for its upload
        harness.assert_unchanged(before)
    else:
        assert slot.state == "failed" and slot.error_code == "image_rejected", slot


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["169.254.169.254"],
        ["100.100.100.200"],
        [PUBLIC_IP, "10.0.0.1"],
        ["::ffff:127.0.0.1"],
    ],
    ids=["loopback", "metadata", "cgnat", "public-and-private", "mapped-loopback"],
)
def test_allowed_image_host_resolving_to_a_private_address_never_fetched(
    harness: Harness, dns: Callable[[dict[str, list[str]]], None], addresses: list[str]
) -> None:
    """An allow-listed name is not enough: a poisoned answer for it is refused too."""
    job_id, _ = received_with_image_url(harness, "https://im.runware.ai/image/x.jpg")
    dns({"im.runware.ai": addresses})
    before = harness.snapshot()
    assert harness.service.promote_slot(job_id, 0, allow_fetch=True) == "rejected"
    assert harness.snapshot()["outbound"] == before["outbound"], "an image fetch was sent"
    assert final_image_keys(harness, job_id) == []


def test_allowed_image_host_without_dns_answer_is_refused(
    harness: Harness, dns: Callable[[dict[str, list[str]]], None]
) -> None:
    """In a sandbox with no DNS the allowed host does not resolve: refused, nothing sent."""
    job_id, _ = received_with_image_url(harness, "https://im.runware.ai/image/x.jpg")
    dns({"im.runware.ai": []})
    before = harness.snapshot()
    assert harness.service.promote_slot(job_id, 0, allow_fetch=True) == "rejected"
    assert harness.snapshot()["outbound"] == before["outbound"]
    assert final_image_keys(harness, job_id) == []


class ImageHost:
    """Answers image fetches with a valid JPEG; records each request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, content=jpeg(), headers={"Content-Type": "image/jpeg"})


def fetching_service(harness: Harness, host: ImageHost, **settings: Any) -> JobService:
    """The harness's use cases with an image host that serves JPEGs, and other settings."""
    http = httpx.Client(transport=httpx.MockTransport(host.handle))
    return JobService(
        dataclasses.replace(
            harness.service.context,
            http=http,
            settings=dataclasses.replace(harness.settings, **settings),
        )
    )


def test_allowed_image_host_fetched_at_the_checked_address_with_host_kept(
    harness: Harness, dns: Callable[[dict[str, list[str]]], None]
) -> None:
    """The positive control: the allowed host, resolving to a public address, is fetched from
    that address (not re-resolved), with its own Host header and TLS name, and stored."""
    job_id, _ = received_with_image_url(harness, "https://im.runware.ai/image/x.jpg")
    dns({"im.runware.ai": [PUBLIC_IP]})
    host = ImageHost()
    service = fetching_service(harness, host)
    assert service.promote_slot(job_id, 0, allow_fetch=True) == "stored"
    [fetch] = host.requests
    assert fetch.method == "GET" and fetch.url.host == PUBLIC_IP
    assert fetch.url.path == "/image/x.jpg"
    assert fetch.headers["Host"] == "im.runware.ai"
    assert fetch.extensions.get("sni_hostname") == "im.runware.ai"
    assert final_image_keys(harness, job_id) == [harness.service.layout.final(job_id, 0, "JPG")]


def test_literal_public_image_host_in_the_allow_list_is_fetched(harness: Harness) -> None:
    """The same control without a resolver stub: a literal public address named in
    RUNWARE_IMAGE_HOSTS, private addresses still refused."""
    job_id, _ = received_with_image_url(harness, f"http://{PUBLIC_IP}:8443/image/x.jpg")
    host = ImageHost()
    service = fetching_service(
        harness, host, runware_image_hosts=(PUBLIC_IP,), allow_private_urls=False
    )
    assert service.promote_slot(job_id, 0, allow_fetch=True) == "stored"
    [fetch] = host.requests
    assert str(fetch.url) == f"http://{PUBLIC_IP}:8443/image/x.jpg"
    assert fetch.headers["Host"] == f"{PUBLIC_IP}:8443"
    assert final_image_keys(harness, job_id) == [harness.service.layout.final(job_id, 0, "JPG")]


def test_private_address_in_the_allow_list_still_refused(harness: Harness) -> None:
    """Naming a private address in RUNWARE_IMAGE_HOSTS does not open it while
    ALLOW_PRIVATE_URLS is false."""
    job_id, _ = received_with_image_url(harness, "http://10.0.0.7/image/x.jpg")
    host = ImageHost()
    service = fetching_service(
        harness, host, runware_image_hosts=("10.0.0.7",), allow_private_urls=False
    )
    assert service.promote_slot(job_id, 0, allow_fetch=True) == "rejected"
    assert host.requests == []
    assert final_image_keys(harness, job_id) == []
