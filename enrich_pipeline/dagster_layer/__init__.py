"""The thin Dagster layer: partitions, resources and assets over the Dagster-free core."""
