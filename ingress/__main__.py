"""`python -m ingress`: serve the webhook endpoint."""

from ingress.bootstrap import main

main()
