"""`exam-events lrs-forward`: xAPI statements from Kafka into a learning record store (LRS).

Modules: `settings` (`LRS_*`), `lrs` (the HTTP exchange with the LRS and what each answer means),
`forwarder` (batches, splitting, dead letters, commits), `metrics`, `http` (probes and /metrics),
and `__main__`, the composition root. Nothing connects at import time.
"""
