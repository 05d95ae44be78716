"""``python -m voketag_ops`` runs the ``voke`` CLI."""

from voketag_ops.cli.main import entry

entry()
