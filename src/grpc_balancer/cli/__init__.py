"""The ``grpc-balancer`` command line."""

from grpc_balancer.cli.main import main

__all__ = ["main"]
