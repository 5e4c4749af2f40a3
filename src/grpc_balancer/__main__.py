import sys

try:
    from grpc_balancer.cli import main
except KeyboardInterrupt:  # Ctrl-C while the package itself loads
    sys.exit(130)

sys.exit(main())
