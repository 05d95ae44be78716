"""Adapters implement the ports: `local` (embedded) and `gcp` (google-cloud clients, imported lazily)."""
