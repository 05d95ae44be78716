"""The embedded `local` environment: real PostgreSQL servers under VOKE_HOME."""
