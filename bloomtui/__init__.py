"""bloomtui: run BLOOM language models one transformer block at a time, in a terminal."""

__version__ = "0.1.0"
