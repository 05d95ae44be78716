"""Test doubles shipped with voke: in-process fakes of the Google Cloud APIs that the real
client libraries talk to (`voketag_ops.testing.gcp_fakes`)."""
