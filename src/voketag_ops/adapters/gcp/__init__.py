"""Thin wrappers over the google-cloud clients; imported only when a cloud environment is used."""

import os

# gRPC's C core logs connection events (GOAWAY, ...) straight to stderr; voke's stderr is for
# voke's own messages. Must be set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# voke never uses gRPC in a forked child, but it forks children that exec at once (a local
# restore's `cp`, with a preexec_fn asking for PR_SET_PDEATHSIG, which makes subprocess fork
# rather than spawn). With fork support on, grpcio (1.80+, grpc/grpc#43055) restarts its poller
# in such a child, which may crash or write to its stderr before exec while a channel is busy.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
