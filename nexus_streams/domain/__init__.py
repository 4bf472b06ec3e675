"""The pure domain: graph model, rules and errors. No Faust/Kafka/Redis/Prometheus imports."""
