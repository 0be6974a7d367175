"""The driver that examples/job_submission.py submits: it runs on the cluster's head node, in
a copy of this directory, with the job's runtime env."""

import os

import rayr

rayr.init()  # in a job: joins the cluster that runs it


@rayr.remote
def shout(word: str) -> str:
    return word.upper()


print(os.environ["GREETING"], rayr.get(shout.remote("from a job")))
rayr.shutdown()
