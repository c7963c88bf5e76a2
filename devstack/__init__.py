"""Running the whole system on one machine: Redis and PostgreSQL (found or started), and `far-mesh dev`."""
