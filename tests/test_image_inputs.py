"""Request images -> PIL images: limits checked before decoding, http(s) fetching that cannot reach private networks.

No network: a local http.server on 127.0.0.1 serves the images (allowed only through FetchPolicy.allow_hosts,
which is test-only), and a fake resolver stands in for DNS where a test needs a host name.
"""

from __future__ import annotations

import base64
import datetime
import io
import socket
import ssl
import struct
import threading
import time
import warnings
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3.util.connection
from PIL import Image, ImageFile

from llava_platform.serve.image_fetch import FetchPolicy
from llava_platform.serve.image_inputs import (
    ImageInputError, ImageLimits, decode_image, image_from_base64, image_from_url,
)  # fmt: skip
from conftest import make_image

PARAM = "messages[0].content[1].image_url.url"
LIMITS = ImageLimits()
SMALL = ImageLimits(max_bytes=10_000)  # the oversized-body tests send 50 kB, not 10 MB
LOCAL = FetchPolicy(timeout_s=2.0, allow_hosts=("127.0.0.1",))


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


PNG = encode(make_image(64, 48), "PNG")


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def refused(call, status: int, code: str, *fragments: str) -> ImageInputError:
    """Run `call`, expecting an ImageInputError with this status and code whose message names PARAM and `fragments`."""
    with pytest.raises(ImageInputError) as info:
        call()
    error = info.value
    assert (error.status, error.code, error.param) == (status, code, PARAM), str(error)
    for fragment in (PARAM, *fragments):
        assert fragment in str(error), f"{fragment!r} not in {error}"
    return error


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR (8-bit RGB) of the given size, followed by a few bytes of image data."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("fmt, media_type", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_data_url_decodes_to_rgb_of_the_right_size(fmt, media_type):
    image = image_from_url(data_url(encode(make_image(64, 48), fmt), media_type), LIMITS, FetchPolicy(), PARAM)
    assert (image.size, image.mode) == ((64, 48), "RGB")


def test_plain_base64_decodes_with_or_without_line_breaks():
    text = base64.b64encode(PNG).decode()
    mime_lines = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert image_from_base64(text, LIMITS, PARAM).size == (64, 48)
    assert image_from_base64(mime_lines, LIMITS, PARAM).size == (64, 48)
    assert image_from_base64(data_url(PNG), LIMITS, PARAM).size == (64, 48)
    transparent = base64.b64encode(encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG")).decode()
    # composited on white, as training's load_image does
    assert image_from_base64(transparent, LIMITS, PARAM).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("text", ["not base64 at all!", base64.b64encode(PNG).decode()[:-3], "iVBORw0KGgo=é"])
def test_bad_base64_is_refused(text):
    refused(lambda: image_from_base64(text, LIMITS, PARAM), 400, "invalid_image", "not valid base64", "padded base64")


@pytest.mark.parametrize("url, fragment", [
    ("data:image/png," + PNG[:20].hex(), "data:image/png;base64,<data>"),  # not base64
    ("data:image/png;base64" + base64.b64encode(PNG).decode(), "not base64"),  # no comma
    (data_url(PNG, "text/plain"), "media type is 'text/plain'"),
    (data_url(PNG, ""), "media type is 'missing'"),
])  # fmt: skip
def test_bad_data_url_is_refused(url, fragment):
    refused(lambda: image_from_url(url, LIMITS, FetchPolicy(), PARAM), 400, "invalid_image", fragment)


def test_non_image_bytes_are_refused():
    refused(lambda: decode_image(b"<html>not an image</html>", LIMITS, PARAM), 400, "invalid_image",
            "not an image", "PNG, JPEG, WEBP or GIF")  # fmt: skip
    refused(lambda: decode_image(b"", LIMITS, PARAM), 400, "invalid_image", "empty")


def test_image_format_not_accepted_is_415():
    refused(lambda: decode_image(encode(make_image(8, 8), "TIFF"), LIMITS, PARAM), 415, "unsupported_image_format",
            "TIFF", "PNG, JPEG, WEBP or GIF")  # fmt: skip


def test_truncated_png_is_refused_not_half_decoded():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    refused(lambda: decode_image(PNG[: len(PNG) * 2 // 3], LIMITS, PARAM), 400, "invalid_image", "truncated or corrupt")
    refused(lambda: decode_image(PNG[:20], LIMITS, PARAM), 400, "invalid_image", "PNG header is truncated or corrupt")


def test_png_header_claiming_30000x30000_is_refused_before_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    bomb = png_claiming(30000, 30000)
    assert len(bomb) < 200
    start = time.monotonic()
    refused(lambda: decode_image(bomb, LIMITS, PARAM), 413, "image_too_large",
            "30000x30000", "900000000 pixels", "40000000", "limits.max_image_pixels")  # fmt: skip
    assert time.monotonic() - start < 0.5


def test_pil_decompression_bomb_error_and_warning_never_escape(monkeypatch):
    """PIL's own limit fires inside a GIF's header when a frame is larger than the screen it declares."""
    gif = bytearray(encode(make_image(100, 100), "GIF"))
    gif[6:10] = struct.pack("<HH", 1, 1)  # logical screen 1x1, the frame stays 100x100
    limits = ImageLimits(max_pixels=10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 pixels > 2x: DecompressionBombError
    refused(lambda: decode_image(bytes(gif), limits, PARAM), 413, "image_too_large", "decompression bomb",
            "PIL.Image.MAX_IMAGE_PIXELS")  # fmt: skip
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # between 1x and 2x: a DecompressionBombWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        refused(lambda: decode_image(bytes(gif), limits, PARAM), 413, "image_too_large", "decompression bomb")


def test_bytes_over_max_bytes_are_refused_before_decoding_base64():
    big = b"\x89PNG" + bytes(LIMITS.max_bytes)
    refused(lambda: image_from_url(data_url(big), LIMITS, FetchPolicy(), PARAM), 413, "image_too_large",
            f"image is {len(big)} bytes", f"over the limit of {LIMITS.max_bytes} (limits.max_image_bytes)")  # fmt: skip
    refused(lambda: decode_image(big, LIMITS, PARAM), 413, "image_too_large", "limits.max_image_bytes")


def test_limits_are_validated():
    with pytest.raises(ValueError, match="ImageLimits.max_pixels must be positive"):
        ImageLimits(max_pixels=0)
    with pytest.raises(ValueError, match="FetchPolicy.timeout_s must be positive"):
        FetchPolicy(timeout_s=0)
    assert ImageLimits(10, 10, 0).max_images == 0  # the serve config allows a server that takes no images


# ---------------------------------------------------------------- a local image server


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: every answer closes its connection, so a body without Content-Length ends at the close."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Host")))
        path = self.path
        try:
            if path == "/img.png":
                self.answer(200, PNG, "image/png")
            elif path == "/redirect":
                self.answer(302, b"", headers={"Location": "/img.png"})
            elif path.startswith("/chain/"):  # /chain/N redirects N times, then serves the PNG
                hops = int(path.rsplit("/", 1)[1])
                self.answer(302, b"", headers={"Location": f"/chain/{hops - 1}"}) if hops else self.answer(200, PNG)
            elif path == "/to-metadata":
                self.answer(302, b"", headers={"Location": "http://169.254.169.254/latest/meta-data"})
            elif path == "/to-file":
                self.answer(301, b"", headers={"Location": "file:///etc/passwd"})
            elif path == "/huge":  # honest Content-Length over the limit
                self.answer(200, bytes(50_000), "image/png")
            elif path == "/huge-unsized":  # no Content-Length: only the read cap stops it
                self.send_response(200)
                self.end_headers()
                for _ in range(200):
                    self.wfile.write(b"\x89PNG" + bytes(5_000))
            elif path == "/slow-body":  # headers at once, then one byte every 50 ms
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.drip(PNG + bytes(1000))
            elif path == "/slow-headers":  # the status line itself one byte every 50 ms, then endless headers
                self.drip(b"HTTP/1.0 200 OK\r\nX-Padding: " + b"a" * 1000)
            elif path == "/gzip":
                self.answer(200, zlib.compress(PNG), "image/png", {"Content-Encoding": "gzip"})
            elif path == "/text":
                self.answer(200, b"<html>hello</html>", "text/html")
            else:
                self.answer(404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def answer(self, status: int, body: bytes, content_type: str = "image/png", headers: dict | None = None):
        self.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def drip(self, data: bytes):
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            time.sleep(0.05)


def start_server(tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # slow handlers end on their own once the client is gone
    server.requests = []
    server.handle_error = lambda request, address: None  # e.g. a TLS handshake the client refused
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def module_server():
    server = start_server()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(module_server):
    """The local server, with an empty request log: (path, Host header) per request."""
    module_server.requests.clear()
    return module_server


def url(server, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}{path}"


@pytest.fixture
def no_connections(monkeypatch):
    """Fails the test if urllib3 opens any TCP connection."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was opened to {args[0]}")

    monkeypatch.setattr(urllib3.util.connection, "create_connection", refuse)


@pytest.fixture
def fake_dns(monkeypatch):
    """`fake_dns[name] = [addresses]`: getaddrinfo answers those for `name`, or "not known" for [].

    `fake_dns.lookups` lists the names asked, in order."""
    real_getaddrinfo = socket.getaddrinfo

    class Zone(dict):
        def __init__(self):
            super().__init__()
            self.lookups: list[str] = []

    zone = Zone()

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in zone:
            return real_getaddrinfo(host, port, *args, **kwargs)
        zone.lookups.append(host)
        if not zone[host]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in zone[host]]  # fmt: skip

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return zone


# ---------------------------------------------------------------- refused URLs


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/img.png", "http://localhost:{port}/img.png", "http://[::1]/img.png", "http://10.0.0.1/",
    "http://169.254.169.254/latest/meta-data", "http://2130706433/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0:{port}/img.png", "http://[fd00:ec2::254]/latest/meta-data",
])  # fmt: skip
def test_private_addresses_are_refused_without_connecting(target, server, no_connections):
    target = target.format(port=server.server_address[1])
    refused(lambda: image_from_url(target, LIMITS, FetchPolicy(), PARAM), 400, "url_not_allowed",
            "public internet address", "metadata")  # fmt: skip
    assert server.requests == []


@pytest.mark.parametrize("addresses", [
    ["93.184.216.34", "10.0.0.1"],  # one private address among public ones is enough to refuse
    ["100.64.0.1"], ["192.168.1.1"], ["172.16.0.1"], ["224.0.0.1"], ["ff02::1"], ["fe80::1"], ["fec0::1"],
    ["::ffff:10.0.0.1"], ["::7f00:1"],  # IPv4-mapped, IPv4-compatible
    ["64:ff9b::a9fe:a9fe"], ["2002:a9fe:a9fe::1"], ["64:ff9b:1::1"],  # NAT64 and 6to4 of 169.254.169.254, local NAT64
    ["2001::1"], ["::"],  # Teredo, unspecified
])  # fmt: skip
def test_every_resolved_address_must_be_public(addresses, fake_dns, no_connections):
    fake_dns["images.test"] = addresses
    refused(lambda: image_from_url("http://images.test/a.png", LIMITS, FetchPolicy(), PARAM), 400, "url_not_allowed",
            "public internet address")  # fmt: skip
    assert fake_dns.lookups == ["images.test"]


@pytest.mark.parametrize("target, code, fragment", [
    ("ftp://x/y.png", "unsupported_url", "scheme 'ftp'"),
    ("file:///etc/passwd", "unsupported_url", "scheme 'file'"),
    ("gopher://x/", "unsupported_url", "scheme 'gopher'"),
    ("/relative/path.png", "unsupported_url", "no URL scheme"),
    ("http:///x.png", "unsupported_url", "no host"),
    ("http://[::1/", "unsupported_url", "not a valid URL"),
    ("http://images.test:99999/", "unsupported_url", "not a valid URL"),
    ("http://user:pw@images.test/a.png", "url_not_allowed", "credentials"),
    ("http://@images.test/a.png", "url_not_allowed", "credentials"),
])  # fmt: skip
def test_urls_that_are_not_plain_http_are_refused(target, code, fragment, no_connections):
    refused(lambda: image_from_url(target, LIMITS, LOCAL, PARAM), 400, code, fragment)


def test_unresolvable_host_is_a_fetch_failure(fake_dns, no_connections):
    fake_dns["no-such-host.test"] = []
    refused(lambda: image_from_url("http://no-such-host.test/a.png", LIMITS, FetchPolicy(), PARAM), 400,
            "image_fetch_failed", "cannot resolve", "no-such-host.test", "not known")  # fmt: skip


# ---------------------------------------------------------------- fetching from an allowed local server


def test_fetches_a_png(server):
    assert image_from_url(url(server, "/img.png"), LIMITS, LOCAL, PARAM).size == (64, 48)
    assert server.requests == [("/img.png", f"127.0.0.1:{server.server_address[1]}")]


def test_connects_to_the_checked_address_with_one_lookup_and_the_original_host(server, fake_dns):
    fake_dns["images.test"] = ["127.0.0.1"]
    policy = FetchPolicy(timeout_s=2.0, allow_hosts=("images.test",))
    assert image_from_url(url(server, "/redirect", host="images.test"), LIMITS, policy, PARAM).size == (64, 48)
    assert fake_dns.lookups == ["images.test", "images.test"]  # one per hop: the redirect is checked again
    assert server.requests == [(p, f"images.test:{server.server_address[1]}") for p in ("/redirect", "/img.png")]


def test_follows_redirects_up_to_the_limit(server):
    assert image_from_url(url(server, "/chain/3"), LIMITS, LOCAL, PARAM).size == (64, 48)
    server.requests.clear()
    refused(lambda: image_from_url(url(server, "/chain/4"), LIMITS, LOCAL, PARAM), 400, "image_fetch_failed",
            "more than 3 redirects", "image_fetch.max_redirects")  # fmt: skip
    assert [path for path, _ in server.requests] == ["/chain/4", "/chain/3", "/chain/2", "/chain/1"]


@pytest.mark.parametrize("path, code, fragment", [
    ("/to-metadata", "url_not_allowed", "169.254.169.254/latest/meta-data"),
    ("/to-file", "unsupported_url", "redirected to URL scheme 'file'"),
])  # fmt: skip
def test_redirect_out_of_bounds_is_refused_even_from_an_allowed_host(server, monkeypatch, path, code, fragment):
    opened, real = [], urllib3.util.connection.create_connection

    def create_connection(address, *args, **kwargs):
        opened.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    refused(lambda: image_from_url(url(server, path), LIMITS, LOCAL, PARAM), 400, code, fragment)
    assert opened == [("127.0.0.1", server.server_address[1])]


@pytest.mark.parametrize("path, fragment", [("/missing", "HTTP 404"), ("/gzip", "Content-Encoding 'gzip'")])
def test_http_errors_name_the_status(server, path, fragment):
    refused(lambda: image_from_url(url(server, path), LIMITS, LOCAL, PARAM), 400, "image_fetch_failed", fragment)


def test_a_page_that_is_not_an_image_is_refused(server):
    refused(lambda: image_from_url(url(server, "/text"), LIMITS, LOCAL, PARAM), 400, "invalid_image", "not an image")


def test_download_over_max_bytes_is_refused(server):
    refused(lambda: image_from_url(url(server, "/huge"), SMALL, LOCAL, PARAM), 413, "image_too_large",
            "50000 (Content-Length)", "limits.max_image_bytes")  # fmt: skip
    refused(lambda: image_from_url(url(server, "/huge-unsized"), SMALL, LOCAL, PARAM), 413, "image_too_large",
            "more than 10000", "limits.max_image_bytes")  # fmt: skip


@pytest.mark.parametrize("path", ["/slow-body", "/slow-headers"])
def test_slow_server_times_out_on_the_whole_download(server, path):
    """Each byte comes well within the socket timeout: only the download's wall-clock deadline stops these."""
    policy = FetchPolicy(timeout_s=0.5, allow_hosts=("127.0.0.1",))
    start = time.monotonic()
    refused(lambda: image_from_url(url(server, path), LIMITS, policy, PARAM), 400, "image_fetch_failed",
            "longer than 0.5 s", "image_fetch.timeout_s")  # fmt: skip
    assert time.monotonic() - start < 1.5


def test_connection_refused_is_a_fetch_failure():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        refused(lambda: image_from_url(f"http://127.0.0.1:{port}/a.png", LIMITS, LOCAL, PARAM), 400,
                "image_fetch_failed", "failed", "Connection refused")  # fmt: skip


# ---------------------------------------------------------------- https: TLS checks the name, not the address


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA and a certificate for images.test it signed, as PEM files."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(name, key, issuer_name, issuer_key, ca: bool):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip
        if ca:  # key usage: digital signature, certificate and CRL signing
            usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
            extensions = [(usage, True), (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)]
        else:
            authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
            extensions = [(x509.SubjectAlternativeName([x509.DNSName(name)]), False), (authority, False)]
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = certificate("test CA", ca_key, ca_name, ca_key, ca=True)
    leaf = certificate("images.test", leaf_key, ca_name, ca_key, ca=False)
    folder = tmp_path_factory.mktemp("tls")
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.key").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return folder


@pytest.fixture
def tls_server(tls_files, monkeypatch):
    """An https server for images.test on 127.0.0.1, its CA trusted through SSL_CERT_FILE; .names: the SNI names."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files / "leaf.pem", tls_files / "leaf.key")
    names = []
    context.sni_callback = lambda connection, name, context: names.append(name)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files / "ca.pem"))
    server = start_server(context)
    server.names = names
    yield server
    server.shutdown()
    server.server_close()


def test_https_checks_the_certificate_against_the_url_host_name(tls_server, fake_dns):
    fake_dns["images.test"] = ["127.0.0.1"]
    fake_dns["other.test"] = ["127.0.0.1"]
    port = tls_server.server_address[1]
    policy = FetchPolicy(timeout_s=2.0, allow_hosts=("images.test", "other.test"))
    assert image_from_url(f"https://images.test:{port}/img.png", LIMITS, policy, PARAM).size == (64, 48)
    assert tls_server.names == ["images.test"]  # SNI carries the name though the connection went to 127.0.0.1
    assert tls_server.requests == [("/img.png", f"images.test:{port}")]
    refused(lambda: image_from_url(f"https://other.test:{port}/img.png", LIMITS, policy, PARAM), 400,
            "image_fetch_failed", "other.test", "failed")  # fmt: skip
