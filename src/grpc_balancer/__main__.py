"""``python -m grpc_balancer`` runs the CLI."""

import sys

from grpc_balancer.cli import main

sys.exit(main())
