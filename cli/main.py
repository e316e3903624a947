"""`exam-events`: run the processes and operate the pipeline, one command with subcommands.

    exam-events ingress                  the webhook ingress (as `python -m ingress`)
    exam-events consumer                 the consumer (as `python -m consumer`)
    exam-events topics create|grow|describe
    exam-events replay --from TOPIC ...  copy dead-letter/unrouted records back to the raw topic
    exam-events tail TOPIC               print derived events readably
    exam-events lag                      the consumer group's lag per partition
    exam-events lrs-forward              forward xAPI statements to an LRS (as `python -m lrs_forward`)

Settings come from the environment, as for the processes (KAFKA_*, CONSUMER_*, INGRESS_*); an
invalid one ends the command with one line and exit status 2. A failure ends it with one line on
stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from cli import lag, replay, tail, topics
from cli.errors import CommandFailed
from common.settings import load_settings
from consumer.settings import ConsumerSettings

PROG = "exam-events"


def _run_ingress(_args: argparse.Namespace) -> int:
    from ingress.bootstrap import main as ingress_main

    ingress_main()
    return 0


def _run_consumer(_args: argparse.Namespace) -> int:
    from consumer.__main__ import main as consumer_main

    consumer_main()
    return 0


def _run_lrs_forward(_args: argparse.Namespace) -> int:
    from lrs_forward.__main__ import main as lrs_forward_main

    return lrs_forward_main()


def build_parser() -> argparse.ArgumentParser:
    """The command line of every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ingress = commands.add_parser(
        "ingress",
        help="run the webhook ingress (settings: INGRESS_*, KAFKA_*; see docs/ingress.md)",
        description="Serve POST /webhooks on INGRESS_PORT and /healthz, /readyz, /metrics on "
        "INGRESS_ADMIN_PORT until SIGTERM or SIGINT. Settings: docs/ingress.md.",
    )
    ingress.set_defaults(process=_run_ingress)
    consumer = commands.add_parser(
        "consumer",
        help="run the consumer (settings: CONSUMER_*, KAFKA_*; see docs/consumer.md)",
        description="Consume the raw topic and publish derived events until SIGTERM or SIGINT; "
        "/healthz, /readyz, /metrics and /asyncapi on CONSUMER_HTTP_PORT. Settings: docs/consumer.md.",
    )
    consumer.set_defaults(process=_run_consumer)
    lrs_forward = commands.add_parser(
        "lrs-forward",
        help="forward xAPI statements to an LRS (settings: LRS_*, KAFKA_*; see docs/lrs-forward.md)",
        description="Consume LRS_STATEMENTS_TOPIC and POST the statements in batches to "
        "{LRS_URL}/xAPI/statements, committing only what the LRS took; refused statements go to "
        "LRS_DLQ_TOPIC. /healthz, /readyz, /metrics on LRS_HTTP_PORT. Runs until SIGTERM or SIGINT. "
        "Settings: docs/lrs-forward.md.",
    )
    lrs_forward.set_defaults(process=_run_lrs_forward)
    for module in (topics, replay, tail, lag):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `exam-events` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "process", None) is not None:
        return int(args.process(args))
    settings = load_settings(ConsumerSettings, PROG)
    # The command reports a failure in one line of its own; the libraries' per-attempt connection
    # errors would only bury it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_run(args, settings))
    except CommandFailed as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


async def _run(args: argparse.Namespace, settings: ConsumerSettings) -> int:
    result: Any = await args.run(args, settings)
    return int(result)
