"""The per-node raylet: scheduler, resources, worker pool and its I/O shell."""
