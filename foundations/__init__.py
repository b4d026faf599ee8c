"""Floor 1: settings, logging, metrics, topics, Kafka connection, and the record formats every stage shares."""
