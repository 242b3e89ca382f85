"""Operating tododb: each worker's metrics and probes (``workers``) and the whole
pipeline's status (``pipeline``: `todo status`, ``GET /v1/admin/status``)."""
