"""Every decision of one call: the attempt plan, retry policy, replay buffer, errors."""
