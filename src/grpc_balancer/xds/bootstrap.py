"""The gRPC xDS bootstrap (``GRPC_XDS_BOOTSTRAP`` file or ``GRPC_XDS_BOOTSTRAP_CONFIG``)."""

from __future__ import annotations

import json
import socket
from typing import Any


def bootstrap(server: str, node_id: str | None = None, cluster: str = "") -> dict[str, Any]:
    """A bootstrap for one insecure ADS server (``HOST:PORT``), xDS v3."""
    return {
        "xds_servers": [
            {
                "server_uri": server,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {
            "id": node_id or f"{socket.gethostname()}",
            "cluster": cluster,
            "locality": {},
        },
    }


def bootstrap_json(server: str, node_id: str | None = None, cluster: str = "") -> str:
    return json.dumps(bootstrap(server, node_id, cluster), indent=2)
