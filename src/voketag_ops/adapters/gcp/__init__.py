"""Thin wrappers over the google-cloud clients; imported only when a cloud environment is used."""

import os

# gRPC's C core logs connection events (GOAWAY, ...) straight to stderr; voke's stderr is for
# voke's own messages. Must be set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
