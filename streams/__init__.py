"""stockflow: streaming inventory and order pipeline on Kafka."""
