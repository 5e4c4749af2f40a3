"""The ``grpc-balancer`` command line."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console script. Imports the CLI here, so a Ctrl-C during those (slow) imports
    exits 130 quietly instead of printing a KeyboardInterrupt traceback."""
    try:
        from grpc_balancer.cli.main import main as run
    except KeyboardInterrupt:
        return 130
    return run(argv)


__all__ = ["main"]
