"""Reliability tests: hostile input (fuzz), security, broker outage; the crash tests reuse `harness` and
`generator`."""
