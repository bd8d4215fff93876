-- The pipeline's warehouse and shared state (ENRICH_WAREHOUSE_URL), beside Dagster's own
-- database; the pipeline creates its tables on first use.
CREATE DATABASE warehouse OWNER dagster;
