"""Thin wrappers over the google-cloud clients; imported only when a cloud environment is used."""
