"""Thin wrappers over the google-cloud clients; imported only when a cloud environment is used.
(gRPC's environment is set by the package itself, `voketag_ops/__init__`, before gRPC can load.)"""
