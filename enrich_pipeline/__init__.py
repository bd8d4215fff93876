"""Contact enrichment as a Dagster project.

The package has a Dagster-free core (``provider``, ``sandbox``, ``warehouse``, ``normalise``,
``ingest``) and a thin Dagster layer (``dagster_layer`` and ``definitions``).
"""
