"""The control plane's current truth, and each kind of client's view of it.

A :class:`Catalog` holds the config, the latest endpoint list of every service and the
test faults. Every change bumps ``generation`` and calls the change listeners (the
server wakes its streams); :meth:`Catalog.view` builds what one :class:`Profile` of
client may see, once per generation and profile, however many streams share it.
Resource versions are content digests (see :mod:`.stream`), so nothing here counts
versions: an unchanged resource keeps its version across rebuilds and restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.xds.model import XdsConfig

P = TypeVar("P")
B = TypeVar("B")
F = TypeVar("F")

#: (config, endpoints by service, profile, faults) → a view
Builder = Callable[[XdsConfig, Mapping[str, Sequence[Endpoint]], P, F], B]


class Catalog(Generic[P, B, F]):
    def __init__(self, config: XdsConfig, builder: Builder[P, F, B], faults: F) -> None:
        self.config = config
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self.faults = faults
        self.generation = 0
        self._builder = builder
        self._views: dict[P, B] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def set_config(self, config: XdsConfig) -> None:
        self.config = config
        for name in set(self.endpoints) - set(config.services):
            del self.endpoints[name]
        self._changed()

    def set_endpoints(self, service: str, endpoints: Sequence[Endpoint]) -> None:
        new = tuple(endpoints)
        if service not in self.config.services or self.endpoints.get(service) == new:
            return
        self.endpoints[service] = new
        self._changed()

    def set_faults(self, faults: F) -> None:
        self.faults = faults
        self._changed()

    def view(self, profile: P) -> B:
        view = self._views.get(profile)
        if view is None:
            view = self._views[profile] = self._builder(
                self.config, self.endpoints, profile, self.faults
            )
        return view

    def _changed(self) -> None:
        self.generation += 1
        self._views.clear()
        for callback in list(self._listeners):
            callback()
