"""Dead-letter headers: what the workers write is what the operator tools read back."""

from datetime import datetime

from foundations.formats import deadletter
from foundations.formats import headers as header_names


def test_built_headers_read_back():
    built = dict(deadletter.build(stage="sync", reason="identity conflict: phone", event_id="ev-1",
                                  source_topic="apro.normalized", source_partition=3, source_offset=41,
                                  location="loc-a"))
    assert set(built) == deadletter.DEADLETTER_HEADERS - {header_names.DLQ_ATTEMPTS}
    assert built[header_names.DLQ_STAGE] == "sync" and built[header_names.DLQ_LOCATION] == "loc-a"
    assert datetime.fromisoformat(built[header_names.DLQ_AT]).tzinfo is not None
    assert deadletter.source(built) == ("apro.normalized", 3, 41)
    assert deadletter.attempts(built) == 0


def test_unreadable_or_missing_fields_read_as_absent():
    assert deadletter.source({}) == ("", None, None)
    assert deadletter.source({header_names.DLQ_SOURCE_TOPIC: "t", header_names.DLQ_SOURCE_PARTITION: "x",
                              header_names.DLQ_SOURCE_OFFSET: ""}) == ("t", None, None)
    assert deadletter.attempts({header_names.DLQ_ATTEMPTS: "two"}) == 0
    assert deadletter.attempts({header_names.DLQ_ATTEMPTS: "-4"}) == 0
    assert deadletter.attempts({header_names.DLQ_ATTEMPTS: "2"}) == 2
