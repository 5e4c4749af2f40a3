"""The asyncio API: balanced drop-ins for ``grpc.aio.insecure_channel`` / ``secure_channel``."""

from grpc_balancer._aio.channel import BalancedChannel, insecure_channel, secure_channel

__all__ = ["BalancedChannel", "insecure_channel", "secure_channel"]
