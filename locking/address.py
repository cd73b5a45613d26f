"""Where a lock node lives and how to log in: parsed from a redis URL or a redis-py client."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

from locking.errors import ConfigurationError

_CERT_REQS = ("none", "optional", "required")
_VERIFY_MODES = (ssl.CERT_NONE, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED)
#: ``//user:password@`` in a URL that `urlsplit` cannot parse.
_USERINFO_PASSWORD = re.compile(r"(//[^/?#:@]*:)[^/?#]*@")


class ConnectionPoolLike(Protocol):
    """The part of a redis-py connection pool a lock node's address is read from."""

    @property
    def connection_kwargs(self) -> Mapping[str, Any]:
        """The keyword arguments the pool's connections are made with (host, port...)."""
        ...


class RedisClientLike(Protocol):
    """A ``redis.Redis``-like client: only its pool's connection arguments are read."""

    @property
    def connection_pool(self) -> ConnectionPoolLike:
        """The client's connection pool."""
        ...


@dataclass(frozen=True, kw_only=True)
class NodeAddress:
    """One Redis lock node.

    :param host: host name or address.
    :param port: TCP port.
    :param db: logical database number.
    :param username: ACL user, or None for the default user.
    :param password: the password; never shown in ``repr`` or logs.
    :param tls: connect with TLS (``rediss://``).
    :param ssl_ca_certs: CA bundle to verify the node's certificate.
    :param ssl_cert_reqs: ``none``, ``optional`` or ``required``.
    :param ssl_certfile: client certificate, for mutual TLS.
    :param ssl_keyfile: client key, for mutual TLS.
    """

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """Return ``host:port``, the form used in logs and errors."""
        return f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> NodeAddress:
        """Parse ``redis://[user[:password]@]host[:port][/db][?ssl_ca_certs=...]``."""
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ConfigurationError(f"cannot parse lock node URL {redact_url(url)!r}") from None
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigurationError(
                f"lock node URL must start with redis:// or rediss://, got {redact_url(url)!r}"
            )
        if not parts.hostname:
            raise ConfigurationError(f"lock node URL has no host: {redact_url(url)!r}")
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        cert_reqs = query.get("ssl_cert_reqs", "required").lower()
        if cert_reqs not in _CERT_REQS:
            raise ConfigurationError(
                f"ssl_cert_reqs must be one of {_CERT_REQS}, got {cert_reqs!r}"
            )
        try:
            port = parts.port or 6379
            db = int(parts.path.lstrip("/") or query.get("db", "0"))
        except ValueError:
            raise ConfigurationError(f"bad port or db in {redact_url(url)!r}") from None
        return cls(
            host=parts.hostname,
            port=port,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
            ssl_ca_certs=query.get("ssl_ca_certs"),
            ssl_cert_reqs=cert_reqs,
            ssl_certfile=query.get("ssl_certfile"),
            ssl_keyfile=query.get("ssl_keyfile"),
        )

    @classmethod
    def from_client(cls, client: RedisClientLike) -> NodeAddress:
        """Read the address of a ``redis.Redis`` client without using its connections."""
        try:
            kwargs = client.connection_pool.connection_kwargs
        except AttributeError:
            raise ConfigurationError(f"not a redis.Redis client: {client!r}") from None
        if "path" in kwargs:
            raise ConfigurationError("unix-socket clients are not supported as lock nodes")
        connection_class = getattr(client.connection_pool, "connection_class", None)
        cert_reqs = _cert_reqs_name(kwargs.get("ssl_cert_reqs", "required"))
        return cls(
            host=kwargs.get("host", "localhost"),
            port=int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db", 0)),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            tls="SSL" in getattr(connection_class, "__name__", ""),
            ssl_ca_certs=kwargs.get("ssl_ca_certs"),
            ssl_cert_reqs=cert_reqs,
            ssl_certfile=kwargs.get("ssl_certfile"),
            ssl_keyfile=kwargs.get("ssl_keyfile"),
        )


def _cert_reqs_name(value: object) -> str:
    """Map redis-py's ``ssl_cert_reqs`` (a name, an `ssl.VerifyMode` or None) to our names."""
    if value is None:  # redis-py's spelling of "do not verify"
        return "none"
    if isinstance(value, str):
        name = value.lower()
        if name not in _CERT_REQS:
            raise ConfigurationError(f"ssl_cert_reqs must be one of {_CERT_REQS}, got {value!r}")
        return name
    for mode, name in zip(_VERIFY_MODES, _CERT_REQS, strict=True):
        if value == mode:
            return name
    raise ConfigurationError(f"unsupported ssl_cert_reqs {value!r}")


def redact_url(url: str) -> str:
    """Return ``url`` with its password masked, for logs and error messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Unparseable (e.g. a broken IPv6 literal): mask whatever sits between the
        # scheme's "//", an optional user and the last "@" of the authority.
        return _USERINFO_PASSWORD.sub(r"\1***@", url)
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


#: How a lock node may be given: a redis URL, an address, or a redis-py client.
NodeSpec: TypeAlias = str | NodeAddress | RedisClientLike


def as_address(node: NodeSpec) -> NodeAddress:
    """Return the address of a node given as `NodeAddress`, redis URL or redis-py client."""
    if isinstance(node, NodeAddress):
        return node
    if isinstance(node, str):
        try:
            return NodeAddress.from_url(node)
        except ConfigurationError:
            raise
        except Exception:
            raise ConfigurationError(f"cannot parse lock node URL {redact_url(node)!r}") from None
    return NodeAddress.from_client(node)


def lock_addresses(nodes: Sequence[NodeSpec], *, allow_fewer_than_three: bool) -> list[NodeAddress]:
    """Return the addresses of a Redlock's nodes: at least three, all distinct.

    :param nodes: URLs, `NodeAddress` objects or ``redis.Redis`` clients.
    :param allow_fewer_than_three: accept 1 or 2 nodes (development only).
    :raises ConfigurationError: too few nodes, or one named twice.
    """
    addresses = [as_address(node) for node in nodes]
    if not addresses:
        raise ConfigurationError("Redlock needs at least one node")
    if len(addresses) < 3 and not allow_fewer_than_three:
        raise ConfigurationError(
            f"Redlock needs at least 3 independent nodes, got {len(addresses)}; "
            "pass allow_fewer_than_three=True for development only"
        )
    names = [address.name for address in addresses]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"lock nodes must be distinct, got {names!r}")
    return addresses
