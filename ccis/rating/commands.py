"""Command-line sub-commands of the rating study (registered by ``ccis.cli``).

``rating-study`` (create it from the workflow's outputs), ``rating-invite`` (private
links), ``rating-serve`` (the web app) and ``rating-table`` (Table 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ccis.common.arguments import add_table_outputs, pick
from ccis.common.pairs import parse_pairs


def _cmd_rating_study(args: argparse.Namespace) -> None:
    from ccis.rating.study import create_study

    create_study(
        args.triplets,
        parse_pairs(args.synthetic, "--synthetic"),
        args.out,
        **pick(args, ("groups", "repeats", "seed", "spec", "title", "replace")),
    )


def _cmd_rating_invite(args: argparse.Namespace) -> None:
    from ccis.rating.invite import invite

    names = [n for n in (args.names or "").split(",") if n.strip()]
    made = invite(
        args.study, raters=args.raters, names=names, admin=args.admin, base_url=args.base_url,
        out=args.out,
    )  # fmt: skip
    if not args.quiet:
        # The links go to stdout only (never to the log): they are the raters' passwords.
        for invitation in made:
            sys.stdout.write(f"{invitation.role}\t{invitation.label}\t{invitation.link}\n")
        sys.stdout.flush()


def _cmd_rating_serve(args: argparse.Namespace) -> None:
    from ccis.rating.app import serve

    serve(
        args.study, host=args.host, port=args.port, allowed_hosts=args.allowed_host,
        origins=args.origin, max_body=args.max_body,
    )  # fmt: skip


def _cmd_rating_table(args: argparse.Namespace) -> None:
    from ccis.rating.table import table2

    table2(args.study, args.out_csv, args.out_md, paper=args.paper)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the rating study's sub-commands on the ``ccis`` parser."""
    from ccis.rating.app import DEFAULT_HOST, DEFAULT_PORT, MAX_BODY

    study = sub.add_parser(
        "rating-study",
        help="create the clinicians' rating study (paper Table 2) from synthetic sets",
        description=(
            "Sample GROUPS training masks that every synthetic set covers; each group shows "
            "the mask, its caption and one image per generator (names hidden, order shuffled "
            "per rater and group). Writes the study file and its images under media/ beside "
            "it. An unchanged study is kept with its raters and ratings."
        ),
    )
    study.add_argument("--triplets", required=True, type=Path, help="captions/train.parquet")
    study.add_argument(
        "--synthetic", action="append", required=True, metavar="GEN=MANIFEST",
        help="a generator's synthetic manifest (synthetic/<gen>.parquet); repeatable",
    )  # fmt: skip
    study.add_argument("--out", required=True, type=Path, help="study file (SQLite) to write")
    study.add_argument("--spec", type=Path, help="JSON file with the study's definition")
    study.add_argument("--groups", type=int, default=30, help="groups (default 30, the paper's)")
    study.add_argument(
        "--repeats", type=int, default=0, help="groups shown twice, for consistency (default 0)"
    )
    study.add_argument("--seed", type=int, default=0, help="sampling and shuffling seed")
    study.add_argument("--title", default="Colonoscopy image rating", help="shown to raters")
    study.add_argument(
        "--replace", action="store_true",
        help="archive an existing different study that has raters or ratings (else: error)",
    )  # fmt: skip
    study.set_defaults(func=_cmd_rating_study)

    inv = sub.add_parser(
        "rating-invite",
        help="make private rater (or admin) links; only the tokens' hashes are stored",
    )
    inv.add_argument("--study", required=True, type=Path, help="study file (rating-study)")
    inv.add_argument("--raters", type=int, default=0, help="number of new raters")
    inv.add_argument("--names", help="comma-separated rater names (default rater-01, …)")
    inv.add_argument("--admin", action="store_true", help="also make an admin (progress) link")
    inv.add_argument(
        "--base-url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
        help="the server's address as raters reach it",
    )  # fmt: skip
    inv.add_argument("--out", type=Path, help="also write the links to this CSV (mode 600)")
    inv.add_argument("--quiet", action="store_true", help="do not print the links")
    inv.set_defaults(func=_cmd_rating_invite)

    srv = sub.add_parser("rating-serve", help="serve the rating web app (127.0.0.1 by default)")
    srv.add_argument("--study", required=True, type=Path, help="study file (rating-study)")
    srv.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on ({DEFAULT_HOST})")
    srv.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0: any)"
    )
    srv.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="a further Host name to answer (e.g. the machine's name); repeatable",
    )  # fmt: skip
    srv.add_argument(
        "--origin", action="append", default=[], metavar="URL",
        help="a further origin allowed to post answers (a TLS proxy's https://…); repeatable",
    )  # fmt: skip
    srv.add_argument(
        "--max-body", type=int, default=MAX_BODY, help=f"largest request body in bytes ({MAX_BODY})"
    )
    srv.set_defaults(func=_cmd_rating_serve)

    tab = sub.add_parser("rating-table", help="Table 2 (user study) from the study's ratings")
    tab.add_argument("--study", required=True, type=Path, help="study file (rating-study)")
    add_table_outputs(tab)
    tab.set_defaults(func=_cmd_rating_table)
