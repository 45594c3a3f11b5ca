"""Adapters: the only modules that talk to PostgreSQL, Redis, RQ, the backup store and crypto libraries."""
