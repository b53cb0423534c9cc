"""The running graph, split by the process each part runs in.

- ``runtime``: the API process (orchestrator, admission, request handles, replica table, launchers).
- ``worker``: a stage replica's process (the worker loop, input gathering, the ``Stage`` contract).
- ``kinds``: adapters from each stage kind to its engine; loaded by a worker when it starts.
"""
