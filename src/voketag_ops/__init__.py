"""voketag-ops: the operations tool of the VokeTag platform (CLI: ``voke``)."""

import os

__version__ = "0.1.0"

# gRPC reads these once, when it is first loaded; set here, before anything can load it (a cloud
# adapter, `voke doctor`'s check of the gcp extra, google.api_core.exceptions). Its C core logs
# connection events (GOAWAY, ...) straight to stderr, which is for voke's own messages. And voke
# never uses gRPC in a forked child, but forks children that exec at once (a preexec_fn asking
# for PR_SET_PDEATHSIG makes subprocess fork: pg_ctl, a restore's cp); with fork support on,
# grpcio 1.80+ restarts its poller in them, which may crash them before exec (grpc/grpc#43055).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
