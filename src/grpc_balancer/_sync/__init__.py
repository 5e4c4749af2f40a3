"""The sync driver: SyncBalancedChannel, blocking and .future() calls, the loop thread."""
