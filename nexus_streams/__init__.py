"""nexus-streams: relationship graphs and pattern workflows, as a streaming service on Kafka."""

__version__ = "0.1.0"
