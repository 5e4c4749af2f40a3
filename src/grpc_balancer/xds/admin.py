"""The control plane's admin service: JSON over unary gRPC methods (no .proto of ours).

``/grpc_balancer.xds.v1.Admin/Status`` answers what ``grpc-balancer xds status`` shows:
each connected stream's node, what it subscribed to per type, the version sent, the
version it ACKed, its last NACK and error, and the policy fallbacks it got. With test
hooks on, ``Fault`` (``{"break": ["cds", "greeter"]}`` or ``{"heal": true}``) and
``SetConfig`` (a whole config file's JSON) change what is served.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from grpc_balancer.xds.server import XdsServer

SERVICE = "grpc_balancer.xds.v1.Admin"
STATUS = f"/{SERVICE}/Status"
FAULT = f"/{SERVICE}/Fault"
SET_CONFIG = f"/{SERVICE}/SetConfig"


def _decode(data: bytes) -> Any:
    return json.loads(data.decode() or "{}")


def _encode(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def handler(server: XdsServer) -> grpc.GenericRpcHandler[Any, Any]:
    async def status(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return server.status()

    async def fault(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if not server.test_hooks:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "test hooks are off")
        try:
            if request.get("heal"):
                server.heal()
            else:
                kind, service = request["break"]
                server.break_resource(kind, service)
        except (KeyError, TypeError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad fault request: {exc}")
        return {"ok": True}

    async def set_config(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        from grpc_balancer.errors import BalancerConfigError
        from grpc_balancer.xds.config import parse_config

        if not server.test_hooks:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "test hooks are off")
        try:
            config = parse_config(request)
        except BalancerConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await server.update_config(config)
        return {"ok": True}

    methods = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_decode, response_serializer=_encode
        )
        for name, fn in (("Status", status), ("Fault", fault), ("SetConfig", set_config))
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def status(server: XdsServer) -> dict[str, Any]:
    now = time.time()
    streams = []
    for record in sorted(server.streams.values(), key=lambda r: r.id):
        types = {}
        for type_url, st in record.state.types.items():
            types[_short(type_url)] = {
                "wildcard": st.wildcard,
                "subscribed": sorted(st.names),
                "sent_version": st.sent_version,
                "sent_names": list(st.sent_names),
                "acked_version": st.acked_version,
                "pending": st.sent_version is not None
                and st.acked_version != st.sent_version
                and (st.nack is None or st.nack.nonce != st.sent_nonce),
                "nack": None
                if st.nack is None
                else {"version": st.nack.version, "error": st.nack.error},
            }
        streams.append(
            {
                "id": record.id,
                "peer": record.peer,
                "node": record.node_id,
                "cluster": record.cluster,
                "user_agent": record.user_agent,
                "client": record.caps.describe() if record.caps else "",
                "listener": record.flavour,
                "protocol": "delta" if record.delta else "sotw",
                "client_features": sorted(record.caps.features) if record.caps else [],
                "connected_s": round(now - record.connected_at, 3),
                "warnings": list(record.warnings),
                "types": types,
            }
        )
    services = {}
    for name, src in server.sources.status().items():
        services[name] = {
            "target": src.target,
            "endpoints": None
            if src.endpoints is None
            else [
                {"address": e.address, "weight": e.weight, "zone": e.metadata.get("zone")}
                for e in src.endpoints
            ],
            "resolver_error": src.error,
        }
    return {
        "address": server.address,
        "generation": server.catalog.generation,
        "services": services,
        "streams": streams,
        "recent_nacks": list(server.nacks),
    }


def _short(type_url: str) -> str:
    from grpc_balancer.xds.stream import SHORT

    return SHORT.get(type_url, type_url)


def call(address: str, method: str, request: Any = None, timeout: float = 5.0) -> Any:
    """Call an admin method on the control plane at ``address`` (blocking)."""
    with grpc.insecure_channel(address) as channel:
        fn = channel.unary_unary(method, request_serializer=_encode, response_deserializer=_decode)
        return fn(request or {}, timeout=timeout)


def fetch_status(address: str, timeout: float = 5.0) -> dict[str, Any]:
    result: dict[str, Any] = call(address, STATUS, timeout=timeout)
    return result
