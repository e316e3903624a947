"""Pieces every process shares: Kafka connection settings and logging set-up."""
