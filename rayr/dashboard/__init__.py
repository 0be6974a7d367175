"""The head's dashboard: web pages, their JSON API under ``/api/`` and Prometheus ``/metrics``.

The head's starter (``rayr.node``) binds the listening sockets, so a busy port is an error
at once and the URL is known before the server has imported anything, and hands them to the
dashboard process (``python -m rayr.dashboard``), which serves them with Starlette on uvicorn.
"""
