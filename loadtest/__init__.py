"""The Double-11 load generator and the event builders it shares with the demo and tests."""
