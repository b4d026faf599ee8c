"""Stream stages: normalize (raw webhook → normalized event) and plan."""

from foundations import native

native.install()  # the normalizer's compiled modules, or their pure Python (foundations/native.py)
