"""The DuckDB warehouse: connections, schema and the set-based SQL every asset runs."""
