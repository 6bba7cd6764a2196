"""The ``recovery`` command line. Read-only commands never import Prefect."""
