"""Shadow runs: a candidate rule run beside the live one on the same events, its decisions compared."""
