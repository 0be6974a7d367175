"""The head's monitor process kind: node and job liveness, recovery of a dead node's work,
placement of groups, history trimming, autoscaling. ``python -m rayr.monitor``."""
