"""Use cases: provision, migrate, suspend, delete... Plain values in, catalog rows out; no Flask, RQ or psycopg."""
