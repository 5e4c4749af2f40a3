"""Private etcd plumbing shared by the ``etcd://`` resolver and server registration.

The wire client (:mod:`grpc_balancer._etcd.client`) is built on aetcd's generated
stubs, whose import registers etcd's ``rpc.proto``, ``kv.proto`` and ``auth.proto`` in
protobuf's default descriptor pool. It is imported on first use only: by the ``etcd://``
resolver module (itself imported on the first etcd target) and by :func:`new_client`
(the first :class:`~grpc_balancer.server.registration.Registration`), never by
``import grpc_balancer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpc_balancer._etcd.client import EtcdClient
    from grpc_balancer._etcd.settings import EtcdSettings


class EtcdError(Exception):
    """An etcd request failed; the text is safe to log (no credentials)."""


def new_client(settings: EtcdSettings) -> EtcdClient:
    """A client for ``settings``: the lazy seam where aetcd is first imported."""
    from grpc_balancer._etcd.client import EtcdClient  # aetcd loads here, on first use

    return EtcdClient(settings)
