"""A job for `rayr job submit`: its own module (stats.py) and a pip package it declares
(requirements.txt), used by tasks spread over the cluster's nodes.

    rayr start --head && rayr start --address 127.0.0.1:6379
    rayr job submit --working-dir examples/job_app -- python main.py
"""

from stats import summarize  # ships with the working dir

import rayr

# Every task of this job runs with the packages of requirements.txt installed (in a virtualenv
# per node, made once and reused), in a copy of the working dir.
rayr.init(runtime_env={"pip": "requirements.txt"})


@rayr.remote
def work(i: int) -> tuple[str, float, str]:
    from stats import square  # the working dir is importable in tasks too
    from termcolor import colored  # from requirements.txt, installed on the node

    return colored(f"item {i}", "green"), square(i), rayr.get_runtime_context().get_node_id()


results = rayr.get([work.options(scheduling_strategy="SPREAD").remote(i) for i in range(8)])
for label, value, node in results:
    print(f"{label}: {value} on node {node[:8]}")
print(summarize([value for _, value, _ in results]))
print(f"nodes used: {len({node for _, _, node in results})}")
