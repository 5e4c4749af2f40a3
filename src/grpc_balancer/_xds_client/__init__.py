"""grpc_balancer's own xDS client (the ``xds:///`` resolver's engine; optional extra).

``bootstrap`` reads gRPC's bootstrap, ``ads`` runs one ADS stream per bootstrap server
for the whole process (ACK/NACK, watchers, reconnect), ``decode`` turns each resource
into plain values (or a NACK reason), ``mapping`` turns the values of one target into
endpoints and a gRPC service config. Imports ``envoy.*`` protobufs: load it lazily.
"""
