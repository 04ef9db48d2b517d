"""coredump-webhook: keep every core dump of annotated pods on durable storage."""

__version__ = "0.1.0"
