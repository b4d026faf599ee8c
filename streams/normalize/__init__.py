"""Normalize stage: pure rules (rules, values, event_kind, dedupe) and the Faust shell (agent, output_producer)."""
