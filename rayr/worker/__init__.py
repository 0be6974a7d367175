"""The worker process kind: runs the tasks its raylet hands it (``executor.py``), and, once it
became an actor, serves the actor's mailbox (``actor_runtime.py``). ``python -m rayr.worker``."""
