"""The cluster launcher (``rayr up`` / ``rayr down``) and the autoscaler that runs in the head
monitor. ``rayr.autoscaler.sdk.request_resources`` asks the autoscaler for capacity."""
