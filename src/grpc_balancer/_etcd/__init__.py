"""Private etcd plumbing shared by the ``etcd://`` resolver and server registration."""
