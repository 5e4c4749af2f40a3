"""A deterministic discrete-event fleet simulator that runs the real policies.

Every client is a real policy (``get_policy_factory(name)``) publishing real pickers
through the real :class:`~grpc_balancer._core.picking.Picking`, on subchannels that are
real :class:`~grpc_balancer.subchannel.Subchannel` objects (in-flight counts, the
latency estimate, call and trailer observers) whose transport seam is simulated. Servers
are queues with a capacity (slots, a service-time distribution) that run the real
server helpers: :class:`~grpc_balancer.server.probes.LoadProbes` answers prequal's
probes, :class:`~grpc_balancer.server.load_reports.LoadReporter` writes the ORCA
trailers weighted_round_robin reads.

Time is virtual: :class:`bench.sim.loop.VirtualLoop` is an asyncio event loop whose
clock jumps to the next timer instead of sleeping, so policy timers, probe tasks and
``asyncio.sleep`` all work unchanged, and a run is a pure function of its seed.

``python -m bench.sim`` runs every scenario (:mod:`bench.sim.scenarios`) and writes
``bench/results/sim_*.json`` and ``.png``.
"""
