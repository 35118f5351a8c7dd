"""Talking to the marketplaces: their open-platform dialects (``platforms``), the local marketplace
simulator (``simulator``, ``sim_client``) and the outbound connectors."""
