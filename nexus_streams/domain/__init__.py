"""The pure domain: graph model and rules, errors. No Faust, Kafka, Redis or Prometheus imports here."""
