"""Helpers for the *server* side of balancing: health, graceful drain, registration."""

from grpc_balancer.server.greeter_server import GreeterServer, serve_forever

__all__ = ["GreeterServer", "serve_forever"]
