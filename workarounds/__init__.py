"""Every Faust and embedded-broker workaround, in one place; README.md says which version each is for."""
