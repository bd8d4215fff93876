"""Real-time intake: leads accepted over HTTP are made durable in a journal first, then landed
in ``raw_contacts`` in order, exactly once, without the request waiting for DuckDB."""
