"""The contract between the RLHF operator and its workers: the RLHFJob spec model and its
validation, the generated CRD, the worker config the operator mounts, the progress report the
driver serves, and the names both sides share. Imports pydantic and PyYAML only: the operator
image and the worker image both install it.

Modules: ``spec`` (the model; ``cluster`` and ``jobstatus`` hold its cluster section and its
status), ``validation`` (YAML in, a job or errors naming fields out), ``crd`` (the schema
generated from the model), ``contract`` (the user-code contracts checked before anything runs),
``workerconfig``, ``progress``, ``podsecurity`` (the restricted Pod Security Standard), ``names``.
"""
