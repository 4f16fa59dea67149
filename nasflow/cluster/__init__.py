"""A search spread over processes: a chief oracle and workers, locally or as a Kubernetes Job.

``spec`` is what every chief and worker process is given; ``local`` runs them as
processes on this machine; ``chief`` runs the chief in a pod and the workers as an
indexed Job (``job`` builds and follows it); ``bootstrap`` serves the spec and dataset to
worker pods; ``worker`` is the entry point of every chief and worker process.
"""

from nasflow.cluster.chief import in_kubernetes, run_search_on_cluster
from nasflow.cluster.local import free_port, run_search_processes, tracking_for_workers
from nasflow.cluster.spec import RECYCLE_EXIT_CODE, WorkerSpec

__all__ = [
    "RECYCLE_EXIT_CODE",
    "WorkerSpec",
    "free_port",
    "in_kubernetes",
    "run_search_on_cluster",
    "run_search_processes",
    "tracking_for_workers",
]
