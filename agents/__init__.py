"""Faust agents, one module per responsibility; each docstring says what it reads, writes, owns."""
