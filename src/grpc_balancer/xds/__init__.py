"""An xDS control plane: grpc_balancer's discovery served over ADS (optional extra ``[xds]``).

``pip install 'grpc-balancer[xds]'``. Importing this package loads no protobuf; the
server and its resources import ``xds-protos`` (``envoy.*``) on first use::

    from grpc_balancer.xds import XdsServer, load_config_file
    async with XdsServer(load_config_file("xds.json"), port=18000) as server:
        await server.wait_for_termination()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grpc_balancer.xds.bootstrap import bootstrap, bootstrap_json
from grpc_balancer.xds.capabilities import Capabilities, choose_policy, from_node
from grpc_balancer.xds.config import XdsConfigError, load_config_file, parse_config
from grpc_balancer.xds.model import PolicySpec, RouteSpec, ServiceSpec, XdsConfig

if TYPE_CHECKING:
    from grpc_balancer.xds.server import XdsServer

__all__ = [
    "Capabilities",
    "PolicySpec",
    "RouteSpec",
    "ServiceSpec",
    "XdsConfig",
    "XdsConfigError",
    "XdsServer",
    "bootstrap",
    "bootstrap_json",
    "choose_policy",
    "from_node",
    "load_config_file",
    "parse_config",
]


def __getattr__(name: str) -> Any:
    if name == "XdsServer":
        try:
            from grpc_balancer.xds.server import XdsServer
        except ImportError as exc:  # pragma: no cover - without the extra
            raise ImportError(
                f"grpc_balancer.xds.XdsServer needs the xds extra "
                f"(pip install 'grpc-balancer[xds]'): {exc}"
            ) from exc
        return XdsServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
