"""Per-node object stores: the backend interface, the registry of backends, record formats."""
