"""Where the webhook's registry look-ups may connect: the image name must not aim them inside.

An image reference decides where the webhook opens connections, and so does a registry's
answer (a token realm, a redirect). This module holds the rules, applied to every connection:

- the address a host name resolves to is checked *after* DNS resolution, and the socket is
  connected to that checked address (no second look-up to rebind): loopback, link-local
  (cloud metadata), unspecified and multicast addresses are refused unless the operator
  listed their network (private ranges stay allowed: in-cluster registries are common);
- an optional allow-list of hosts (``host``, ``host:port`` or ``*.example.com``) for operators
  who pin the webhook's egress;
- redirects are followed by hand, only to HTTPS, and lose their credentials on another host.

Refusals raise :class:`EgressRefused`; the resolver turns it into a short reason class.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from webhook import __version__

#: Sent on every registry request: registries' logs tell the webhook from kubelets and users.
USER_AGENT = f"coredump-webhook/{__version__} (registry entrypoint look-up)"
#: Redirects followed per request (a blob behind a CDN takes one).
MAX_REDIRECTS = 3

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressRefused(Exception):
    """A connection the rules forbid; ``reason`` is the short class shown to users."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_networks(values: Iterable[str]) -> tuple[_Network, ...]:
    """CIDRs (or single addresses) the operator allows although they are loopback/link-local."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an address or network (e.g. 127.0.0.1/32)") from None
    return tuple(out)


def forbidden_kind(address: _Address) -> str | None:
    """Why connecting to ``address`` could reach the node or the cloud's insides (None: fine)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    return None


def host_allowed(host: str, port: int | None, patterns: tuple[str, ...]) -> bool:
    """Whether ``host[:port]`` is on the allow-list (an empty list allows every host)."""
    if not patterns:
        return True
    host = host.lower().strip("[]")
    for pattern in patterns:
        phost, pport = split_host_port(pattern.lower())
        if pport is not None and port != pport:
            continue
        if fnmatch.fnmatchcase(host, phost):
            return True
    return False


def split_host_port(value: str) -> tuple[str, int | None]:
    """"host", "host:5000", "[::1]:5000", "::1" -> (host without brackets, port or None)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port) if port.isdigit() else None
    return value, None


@dataclass(frozen=True)
class EgressPolicy:
    """The rules every registry connection follows (see the module docstring)."""

    #: Networks allowed although loopback/link-local (e.g. a mirror on the node).
    allowed_networks: tuple[_Network, ...] = ()
    #: Hosts the webhook may contact at all; empty: any host.
    allowed_hosts: tuple[str, ...] = ()

    def check_address(self, host: str, address: _Address) -> None:
        kind = forbidden_kind(address)
        if kind is None or any(address in net for net in self.allowed_networks):
            return
        raise EgressRefused(f"{host} resolves to {kind} address {address}, not allowed", f"{kind} address refused")

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise EgressRefused(f"bad port in {url}", "invalid address") from None
        if not host_allowed(parts.hostname or "", port or (443 if parts.scheme == "https" else 80), self.allowed_hosts):
            raise EgressRefused(f"{parts.hostname} is not on the registry allow-list", "registry not allowed")

    def connect(self, host: str, port: int, timeout: Any, source_address: Any, socket_options: Any) -> socket.socket:
        """Resolve ``host``, check every address, connect to a checked one (never resolve twice)."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise
        addresses = []
        for family, socktype, proto, _, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            self.check_address(host, address)  # any forbidden answer refuses the name
            addresses.append((family, socktype, proto, sockaddr))
        error: OSError | None = None
        for family, socktype, proto, sockaddr in addresses:
            sock = socket.socket(family, socktype, proto)
            try:
                for opt in socket_options or ():
                    sock.setsockopt(*opt)
                if isinstance(timeout, (int, float)):
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        raise error or OSError(f"no address for {host}")


def _connection_class(base: type, policy: EgressPolicy) -> type:
    def _new_conn(self: Any) -> socket.socket:
        from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

        try:
            return policy.connect(self._dns_host, self.port, self.timeout, self.source_address, self.socket_options)
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e
        except TimeoutError as e:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from e
        except EgressRefused:
            raise
        except OSError as e:
            raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e

    return type(f"Guarded{base.__name__}", (base,), {"_new_conn": _new_conn})


class GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections go only where :class:`EgressPolicy` allows."""

    def __init__(self, policy: EgressPolicy, **kwargs: Any) -> None:
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        http_pool = type("GuardedHTTPPool", (HTTPConnectionPool,),
                         {"ConnectionCls": _connection_class(HTTPConnection, self.policy)})
        https_pool = type("GuardedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": _connection_class(HTTPSConnection, self.policy)})
        self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}

    def __getstate__(self) -> dict:  # pragma: no cover - requests pickles adapters rarely
        state: dict = super().__getstate__()  # type: ignore[assignment]  # typeshed: object
        return {**state, "policy": self.policy}


def guard_session(session: requests.Session, policy: EgressPolicy, pool_maxsize: int = 32) -> requests.Session:
    """Make every connection of ``session`` follow ``policy``; no proxies or netrc from the env
    (a proxy would connect for us, past the address check), and the project's User-Agent."""
    session.trust_env = False
    adapter = GuardedAdapter(policy, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def guarded_session(policy: EgressPolicy, pool_maxsize: int = 32) -> requests.Session:
    """A new Session following ``policy`` (see :func:`guard_session`)."""
    return guard_session(requests.Session(), policy, pool_maxsize)


def follow(session: requests.Session, policy: EgressPolicy, url: str, *, headers: dict, auth: Any,
           **kwargs: Any) -> requests.Response:
    """GET ``url``, following redirects by hand: only to HTTPS, each target checked against the
    allow-list, and credentials (Authorization, basic auth) dropped once the host changes."""
    origin = urlsplit(url).netloc.lower()
    for _ in range(MAX_REDIRECTS + 1):
        policy.check_url(url)
        resp = session.get(url, headers=headers, auth=auth, allow_redirects=False, **kwargs)
        if not resp.is_redirect:
            return resp
        location = resp.headers.get("Location", "")
        resp.close()
        target = urljoin(url, location)
        if urlsplit(target).scheme != "https":
            raise EgressRefused(f"redirect from {url} to {target}: not HTTPS", "redirect not HTTPS")
        if urlsplit(target).netloc.lower() != origin:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            auth = None
        url = target
    raise EgressRefused(f"more than {MAX_REDIRECTS} redirects from {origin}", "too many redirects")
