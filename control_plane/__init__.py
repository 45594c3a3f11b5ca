"""Control plane for database-per-tenant PostgreSQL: catalog, API, jobs and CLI."""
