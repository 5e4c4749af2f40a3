"""The asyncio driver: BalancedChannel and its four call objects."""
