"""The record formats shared by every stage: raw webhook, normalized event, CRM commands, header names."""
