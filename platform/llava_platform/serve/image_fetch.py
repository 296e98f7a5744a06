"""Downloading an http(s) image URL for serve/image_inputs.py, without letting the URL reach the server's own network.

The risk is server-side request forgery: a URL that makes the server read its own network, e.g. the cloud
metadata service at 169.254.169.254. So:
  * the host is resolved once, and EVERY address it resolves to must be a public internet address
    (IPv4 inside IPv6 forms such as ::ffff:127.0.0.1 are unwrapped first); odd spellings of an address
    (http://2130706433/, http://0x7f.1/) resolve like any name, so the check sees 127.0.0.1;
  * the connection goes to that checked address: no second lookup, so DNS rebinding cannot swap it.
    TLS (SNI, certificate and host name check) still uses the URL's host name, and so does the Host header;
  * redirects are followed by hand, each new URL checked from scratch (scheme, host, addresses);
  * the body is read with a cap of max_bytes + 1 bytes, and the whole download (DNS aside: the system
    resolver bounds that) has one wall-clock deadline. Proxy environment variables are not used.

Every refusal is an ImageInputError (serve/image_limits.py), as in image_inputs, which calls `download`.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, HTTPError
from urllib3.util.ssl_match_hostname import CertificateError

from llava_platform.serve.image_limits import ImageInputError, ImageLimits, too_many_bytes

__all__ = ["FetchPolicy", "download"]

log = logging.getLogger(__name__)

_MAX_URL_CHARS = 8192  # http(s) URLs only; data: URLs are bounded by max_bytes
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_READ_CHUNK = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are an IPv4 address
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215): into the operator's network

# Error messages name the limits as the serve config spells them (serve/spec.py): FetchPolicy.timeout_s is
# image_fetch.timeout_s there, ImageLimits.max_bytes is limits.max_image_bytes.


@dataclass(frozen=True)
class FetchPolicy:
    """How http(s) image URLs are downloaded (the serve config's image_fetch section).

    allow_hosts IS FOR TESTS ONLY. A URL whose host is listed skips the public-address check: that is how
    tests fetch from a server on 127.0.0.1. Listing a host in production hands clients whatever that name
    resolves to, i.e. server-side request forgery. Redirect targets are checked on their own host, so an
    allowed host still cannot redirect into the private network.
    """

    timeout_s: float = 10.0  # the whole download: every redirect, connect and TLS handshake included
    max_redirects: int = 3
    allow_hosts: tuple[str, ...] = ()  # TEST ONLY: host names or IPs exempt from the address check

    def __post_init__(self):
        if self.timeout_s <= 0:
            raise ValueError(f"FetchPolicy.timeout_s must be positive, got {self.timeout_s}")
        if self.max_redirects < 0:
            raise ValueError(f"FetchPolicy.max_redirects must be >= 0, got {self.max_redirects}")
        # compared with the URL's host as urlsplit gives it: lower case, no IPv6 brackets
        object.__setattr__(self, "allow_hosts", tuple(h.strip("[]").lower() for h in self.allow_hosts))


@dataclass(frozen=True)
class _Target:
    """One checked http(s) URL: where to connect and what to send."""

    url: str
    tls: bool
    host: str  # ASCII host name or IP literal: what was resolved, and what TLS verifies
    port: int
    addresses: tuple[str, ...]  # resolved and checked; connections go only here, never to a fresh lookup
    host_header: str
    path: str  # request target: path and query, percent-encoded


def download(url: str, limits: ImageLimits, policy: FetchPolicy, param: str) -> bytes:
    """GET `url`, following up to policy.max_redirects redirects, each checked from scratch; the final body."""
    with _Deadline(policy.timeout_s) as deadline:
        for _ in range(policy.max_redirects + 1):
            target = _check_url(url, policy, param)
            body, location = _get(target, limits, deadline, param)
            if location is None:
                return body
            url = urljoin(url, location)
    raise ImageInputError(f"{param}: more than {policy.max_redirects} redirects (image_fetch.max_redirects); "
                          "link the image's final URL", param, 400, "image_fetch_failed")  # fmt: skip


def _check_url(url: str, policy: FetchPolicy, param: str) -> _Target:
    """Parse an http(s) URL and resolve its host; refuse it unless every address is public (or allow-listed)."""
    def refuse(why: str, code: str = "unsupported_url") -> ImageInputError:
        return ImageInputError(f"{param}: {url[:200]!r}: {why}", param, 400, code)

    if len(url) > _MAX_URL_CHARS:
        raise refuse(f"URL is {len(url)} characters, over {_MAX_URL_CHARS}; send the image as a data: URL")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in 0..65535
    except ValueError as e:
        raise refuse(f"not a valid URL ({e})") from e
    if parts.scheme.lower() not in ("http", "https"):  # a redirect's: image_from_url checked the first URL's
        raise refuse(f"redirected to URL scheme {parts.scheme.lower()!r}; only http and https are followed")
    if "@" in parts.netloc:
        raise refuse("URLs with credentials (user:password@) are refused; link an image that needs none",
                     "url_not_allowed")  # fmt: skip
    if not parts.hostname:
        raise refuse("URL has no host; send http(s)://host/path")
    host = _ascii_host(parts.hostname, refuse)
    tls = parts.scheme.lower() == "https"
    default_port = 443 if tls else 80
    addresses = _resolve(host, port or default_port, param)
    if host.rstrip(".") not in policy.allow_hosts:
        private = [a for a in addresses if not _is_public(a)]
        if private:
            log.warning("refused image URL %r: %s resolves to %s, not public", url[:200], host, private)
            # the addresses stay in the log: telling a client what an internal name resolves to maps the network
            raise refuse("the host does not resolve to a public internet address; image URLs must be reachable "
                         "on the public internet (private, loopback, link-local and metadata addresses are refused)",
                         "url_not_allowed")  # fmt: skip
    bracketed = f"[{host}]" if ":" in host else host
    # spaces and non-ASCII percent-encoded, existing %XX kept: http.client refuses to send either raw
    path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe="/?%:@!$&'()*+,;=~[]")
    host_header = bracketed if port in (None, default_port) else f"{bracketed}:{port}"
    return _Target(url, tls, host, port or default_port, addresses, host_header, path)


def _ascii_host(host: str, refuse) -> str:
    """The host in ASCII (IDNA for international names), as DNS, TLS and the Host header take it."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise refuse(f"host {host[:100]!r} is not a valid host name ({e})") from e


def _resolve(host: str, port: int, param: str) -> tuple[str, ...]:
    """Every address `host` resolves to, in the resolver's order (getaddrinfo also reads 2130706433 as an IP)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:  # socket.gaierror is an OSError
        raise ImageInputError(f"{param}: cannot resolve the image URL's host {host!r} ({e}); check the URL",
                              param, 400, "image_fetch_failed") from e  # fmt: skip
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in found if info[0] in (socket.AF_INET, socket.AF_INET6)))
    if not addresses:
        raise ImageInputError(f"{param}: the image URL's host {host!r} has no IPv4 or IPv6 address; check the URL",
                              param, 400, "image_fetch_failed")  # fmt: skip
    return addresses


def _is_public(text: str) -> bool:
    """Whether an address is on the public internet, looking inside IPv6 forms that carry an IPv4 address."""
    address = ipaddress.ip_address(text)
    if address.version == 6:
        embedded = address.ipv4_mapped or address.sixtofour  # ::ffff:a.b.c.d, 2002:aabb:ccdd::/48
        if embedded is None and (address in _NAT64 or int(address) >> 32 == 0):  # NAT64, IPv4-compatible ::a.b.c.d
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _is_public(str(embedded))
        if address in _LOCAL_NAT64 or address.is_site_local:
            return False
    # is_global alone lets multicast through, and fec0::/10 on older Pythons
    return address.is_global and not (address.is_multicast or address.is_reserved)


def _get(target: _Target, limits: ImageLimits, deadline: _Deadline, param: str) -> tuple[bytes | None, str | None]:
    """One GET of `target`: (body, None) for a 200 answer, (None, location) for a redirect."""
    headers = {"Host": target.host_header, "User-Agent": "llava-platform-image-fetch", "Accept": "image/*",
               "Accept-Encoding": "identity"}  # fmt: skip
    failure: Exception | None = None
    for address in target.addresses:  # the next one only when no TCP connection could be made
        connection = _connection(target, address, deadline)
        try:
            connection.request("GET", target.path, headers=headers, preload_content=False, decode_content=False)
            response = connection.getresponse()
            if response.status in _REDIRECT_STATUSES and response.headers.get("location"):
                return None, response.headers["location"]
            if response.status != 200:
                raise ImageInputError(f"{param}: {target.url[:200]!r} answered HTTP {response.status} "
                                      f"{response.reason or ''}; link an image URL that answers 200 without "
                                      "credentials", param, 400, "image_fetch_failed")  # fmt: skip
            return _read_body(response, target, limits, deadline, param), None
        except ConnectTimeoutError as e:  # and NewConnectionError, its subclass: nothing sent yet
            failure = e
            if deadline.remaining() <= 0:
                break
        except (HTTPError, http.client.HTTPException, OSError, CertificateError) as e:  # ssl errors are OSErrors
            raise _fetch_failed(target, e, deadline, param) from e
        finally:
            deadline.forget()
            connection.close()
    raise _fetch_failed(target, failure, deadline, param)


def _connection(target: _Target, address: str, deadline: _Deadline) -> HTTPConnection:
    """A urllib3 connection to the checked `address`; TLS verifies the URL's host name, not the address."""
    timeout = max(deadline.remaining(), 0.001)
    if target.tls:
        name = target.host.rstrip(".")
        connection = _WatchedHTTPSConnection(address, target.port, timeout=timeout, server_hostname=name,
                                             assert_hostname=name, cert_reqs="CERT_REQUIRED")  # fmt: skip
    else:
        connection = _WatchedHTTPConnection(address, target.port, timeout=timeout)
    connection.deadline = deadline
    return connection


def _read_body(response, target: _Target, limits: ImageLimits, deadline: _Deadline, param: str) -> bytes:
    """The body, read up to limits.max_bytes + 1 bytes; over the limit is refused as soon as it shows."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # we asked for identity: decompressing would bypass the byte cap
        raise ImageInputError(f"{param}: {target.url[:200]!r} sent Content-Encoding {encoding[:40]!r} although asked "
                              "for none; host the image uncompressed", param, 400, "image_fetch_failed")  # fmt: skip
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_many_bytes(f"{declared} (Content-Length)", limits, param)
    body = bytearray()
    while chunk := response.read1(min(_READ_CHUNK, limits.max_bytes + 1 - len(body))):  # one recv at most
        body += chunk
        if len(body) > limits.max_bytes:
            raise too_many_bytes(f"more than {limits.max_bytes}", limits, param)
        if deadline.remaining() <= 0:
            raise TimeoutError("deadline passed while reading the body")  # reported by _fetch_failed
    if deadline.expired:  # the socket was shut down: an end without Content-Length looks like a normal end
        raise TimeoutError("deadline passed while reading the body")
    return bytes(body)


def _fetch_failed(target: _Target, error: Exception | None, deadline: _Deadline, param: str) -> ImageInputError:
    if deadline.expired or deadline.remaining() <= 0:
        why = (f"took longer than {deadline.seconds} s (image_fetch.timeout_s); host the image somewhere faster "
               "or send it as a data: URL")  # fmt: skip
    else:
        why = f"failed ({error}); check that the URL serves the image publicly"
    return ImageInputError(f"{param}: downloading {target.url[:200]!r} {why}", param, 400, "image_fetch_failed")


class _Deadline:
    """The wall-clock limit of one download, redirects included.

    Socket timeouts bound each read, not the download: a server sending one byte per timeout keeps a read
    of the headers (or of the TLS handshake) going for hours and holds an ingress thread. So a timer shuts
    the watched connection's socket down at the deadline, which ends any blocked read at once.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()  # orders the timer's shutdown against watch() and forget()
        self._socket: socket.socket | None = None  # a duplicate of the connection's socket, ours alone
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        """Watch a new connection. A duplicate, not `sock`: TLS wrapping detaches `sock`, and http.client closes
        its descriptor at the body's end, after which the number could belong to another thread's socket."""
        with self._lock:
            self._socket = sock.dup()
            if self.expired:
                self._shutdown()

    def forget(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._socket is not None:
                self._shutdown()

    def _shutdown(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # the connection itself, through every descriptor of it
        except OSError:
            pass  # already closed by the peer

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


class _DeadlineWatched:
    """Mixin for urllib3's connections: the new TCP socket goes to the download's deadline before TLS or HTTP use it."""

    deadline: _Deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self.deadline.watch(sock)
        return sock


class _WatchedHTTPConnection(_DeadlineWatched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_DeadlineWatched, HTTPSConnection):
    pass
