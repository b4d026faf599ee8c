"""Floor 1: settings, logging, metrics, topics, Kafka connection, and the record formats every stage shares."""

from foundations import native

native.install()  # before any compiled module is imported: pure Python when asked or when the build is stale
