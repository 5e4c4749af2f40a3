"""Server-side helpers for balanced fleets: etcd registration (``server.registration``)
and ORCA load reports (``server.load_reports``). The demo greeter server is
:mod:`grpc_balancer.demo`."""
