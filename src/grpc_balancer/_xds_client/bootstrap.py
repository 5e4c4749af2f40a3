"""gRPC's xDS bootstrap (gRFC A27): where the control plane is and who this node is.

Read, first found wins, from ``ResolverOptions.extra["bootstrap"]`` (a mapping or JSON
text), the file named by ``GRPC_XDS_BOOTSTRAP``, or the JSON in
``GRPC_XDS_BOOTSTRAP_CONFIG``. Only the first of ``xds_servers`` is used (as gRPC);
``channel_creds`` takes the first type we know (``insecure``, ``tls``,
``google_default``). Every error names the field and where the bootstrap came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grpc_balancer.errors import BalancerConfigError

BOOTSTRAP_ENV = "GRPC_XDS_BOOTSTRAP"
BOOTSTRAP_CONFIG_ENV = "GRPC_XDS_BOOTSTRAP_CONFIG"
EXTRA_KEY = "bootstrap"
CREDS = ("insecure", "tls", "google_default")
#: gRPC's default template: the listener name is the target's path.
DEFAULT_TEMPLATE = "%s"


class BootstrapError(BalancerConfigError):
    """No bootstrap, or one that is not gRPC's format (the message names the field)."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One ADS server: the key of the process-wide stream to it."""

    uri: str
    creds: str
    ignore_resource_deletion: bool = False


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    cluster: str = ""
    zone: str = ""
    region: str = ""
    sub_zone: str = ""
    metadata_json: str = "{}"

    @property
    def metadata(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.metadata_json)
        return value


@dataclass(frozen=True, slots=True)
class Bootstrap:
    server: ServerConfig
    node: Node
    listener_template: str = DEFAULT_TEMPLATE
    #: What it was read from, for error messages ("GRPC_XDS_BOOTSTRAP=/etc/x.json").
    source: str = field(default="", compare=False)


def load_bootstrap(extra: Mapping[str, Any] | None = None) -> Bootstrap:
    """The bootstrap from ``extra["bootstrap"]``, else the two environment variables."""
    given = (extra or {}).get(EXTRA_KEY)
    if given is not None:
        return parse_bootstrap(given, "ResolverOptions.extra['bootstrap']")
    path = os.environ.get(BOOTSTRAP_ENV)
    if path:
        source = f"{BOOTSTRAP_ENV}={path}"
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise BootstrapError(f"{source}: cannot read it: {exc.strerror or exc}") from None
        return parse_bootstrap(text, source)
    config = os.environ.get(BOOTSTRAP_CONFIG_ENV)
    if config:
        return parse_bootstrap(config, BOOTSTRAP_CONFIG_ENV)
    raise BootstrapError(
        f"xds targets need a bootstrap: set {BOOTSTRAP_ENV} (a file) or "
        f"{BOOTSTRAP_CONFIG_ENV} (JSON), or pass ResolverOptions(extra={{'bootstrap': ...}})"
    )


def parse_bootstrap(raw: str | bytes | Mapping[str, Any], source: str) -> Bootstrap:
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise BootstrapError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise BootstrapError(f"{source}: must be a JSON object")
    servers = raw.get("xds_servers")
    if not isinstance(servers, list) or not servers:
        raise BootstrapError(f"{source}: xds_servers must be a non-empty list")
    server = _server(servers[0], f"{source}: xds_servers[0]")
    node = _node(raw.get("node", {}), f"{source}: node")
    template = raw.get("client_default_listener_resource_name_template", DEFAULT_TEMPLATE)
    if not isinstance(template, str) or not template:
        raise BootstrapError(
            f"{source}: client_default_listener_resource_name_template must be a string"
        )
    if template.startswith("xdstp:"):
        raise BootstrapError(
            f"{source}: xdstp:// resource names (federation, gRFC A47) are not supported"
        )
    return Bootstrap(server, node, template, source)


def _server(raw: Any, where: str) -> ServerConfig:
    if not isinstance(raw, Mapping):
        raise BootstrapError(f"{where} must be an object")
    uri = raw.get("server_uri")
    if not isinstance(uri, str) or not uri:
        raise BootstrapError(f"{where}.server_uri must be a non-empty string")
    creds_list = raw.get("channel_creds")
    if not isinstance(creds_list, list) or not creds_list:
        raise BootstrapError(f"{where}.channel_creds must be a non-empty list")
    types = []
    for i, creds in enumerate(creds_list):
        if not isinstance(creds, Mapping) or not isinstance(creds.get("type"), str):
            raise BootstrapError(f"{where}.channel_creds[{i}] must be an object with a type")
        types.append(creds["type"])
    chosen = next((t for t in types if t in CREDS), None)
    if chosen is None:
        raise BootstrapError(
            f"{where}.channel_creds: none of {types} is supported (supported: {', '.join(CREDS)})"
        )
    features = raw.get("server_features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise BootstrapError(f"{where}.server_features must be a list of strings")
    return ServerConfig(uri, chosen, "ignore_resource_deletion" in features)


def _node(raw: Any, where: str) -> Node:
    if not isinstance(raw, Mapping):
        raise BootstrapError(f"{where} must be an object")
    node_id = raw.get("id", "")
    cluster = raw.get("cluster", "")
    if not isinstance(node_id, str) or not isinstance(cluster, str):
        raise BootstrapError(f"{where}.id and {where}.cluster must be strings")
    locality = raw.get("locality", {})
    if not isinstance(locality, Mapping):
        raise BootstrapError(f"{where}.locality must be an object")
    parts = {k: locality.get(k, "") for k in ("zone", "region", "sub_zone")}
    if not all(isinstance(v, str) for v in parts.values()):
        raise BootstrapError(f"{where}.locality: zone, region and sub_zone must be strings")
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise BootstrapError(f"{where}.metadata must be an object")
    return Node(node_id, cluster, metadata_json=json.dumps(dict(metadata)), **parts)
