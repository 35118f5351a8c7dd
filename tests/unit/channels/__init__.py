"""Marketplace dialects and the simulator's state, no network: signing, verifying, answers, their classification."""
