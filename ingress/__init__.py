"""The webhook ingress: an authenticated HTTP endpoint that answers 2xx only after Kafka has the body."""
