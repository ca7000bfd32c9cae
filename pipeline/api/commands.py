"""``python -m pipeline serve`` and ``python -m pipeline token create|list|revoke``.

The CLI's parser and dispatcher call :func:`add_parsers` and :data:`COMMANDS`; fastapi and
uvicorn are imported only when the server starts, so other commands start as fast as before.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import logging
import sys
from typing import Any, TextIO

from pipeline.api.settings import ApiSettings
from pipeline.api.tokens import ROLES, create_token, list_tokens, revoke_token
from pipeline.config import Settings
from pipeline.errors import InputError
from pipeline.logs import LogFiles, setup_logging
from pipeline.runs import control
from pipeline.store.db import open_database

log = logging.getLogger("pipeline.api")


def add_parsers(sub: Any, settings: Settings) -> None:
    """``serve`` and ``token`` on the CLI's subcommands (``sub``: its ``add_subparsers()``)."""
    api = ApiSettings.from_settings(settings)
    serve = sub.add_parser("serve", help="serve the REST API (and execute queued runs) on this machine")
    serve.add_argument("--host", default=api.host, help="address to listen on (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=int, default=api.port, help="port (default: %(default)s)")
    serve.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto",
                       help="HTTP parser (default: %(default)s, httptools when installed: less CPU per request)")
    serve.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                       help="event loop (default: %(default)s, uvloop when installed; the run executor keeps its own asyncio loop)")

    token = sub.add_parser("token", help="create, list or revoke REST API tokens")
    verbs = token.add_subparsers(dest="token_command", required=True, parser_class=type(token))
    create = verbs.add_parser("create", help="make a token; it is shown once")
    create.add_argument("--name", required=True, help="who uses it; reviews made with it are written as this reviewer")
    create.add_argument("--role", choices=ROLES, default="reviewer",
                        help="reviewer: review; operator: also run; admin: also manage tokens (default: %(default)s)")
    listing = verbs.add_parser("list", help="list the tokens (never the tokens themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    revoke = verbs.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("name", help="the token's name (or its id)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    import uvicorn

    from pipeline.api.app import create_app
    from pipeline.runs.background import BackgroundRunner

    if not 0 < args.port < 65536:
        raise InputError(f"{args.port} is not a port number (1–65535)", field="port")
    for option, module in (("http", "httptools"), ("loop", "uvloop")):
        if getattr(args, option) == module and importlib.util.find_spec(module) is None:
            raise InputError(f"--{option} {module}: {module} is not installed (pip install -r requirements.txt)", field=option)
    control.check_data_dir(settings)
    log_path = setup_logging(LogFiles.from_settings(settings), console_level=logging.WARNING if sys.stderr.isatty() else logging.INFO)
    engine = open_database(settings)
    runner = BackgroundRunner(engine, settings)
    app = create_app(settings, engine, runner=runner)
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}, reachable from other machines; every route but /health and /ready needs a token",
              file=sys.stderr)
    if not list_tokens(engine, include_revoked=False):
        print("No API token yet: make one with  python -m pipeline token create --name NAME --role operator", file=out)
    print(f"Darkroom API on http://{args.host}:{args.port}  (docs: http://{args.host}:{args.port}/docs); log file {log_path}",
          file=out, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, proxy_headers=False, server_header=False,
                http=args.http, loop=args.loop)
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = open_database(settings)
    if args.token_command == "create":
        info, token = create_token(engine, args.name, args.role)
        print(f"Token {info.id} for {info.name} ({info.role}). It is shown this once; keep it somewhere safe:\n{token}", file=out)
        return 0
    if args.token_command == "revoke":
        info = revoke_token(engine, args.name)
        print(f"Revoked token {info.id} ({info.name}, {info.role}); it no longer works.", file=out)
        return 0
    tokens = list_tokens(engine)
    if args.json:
        print(json.dumps([t.as_dict() for t in tokens], indent=1), file=out)
    elif not tokens:
        print("No tokens yet. Make one with: python -m pipeline token create --name NAME --role operator", file=out)
    else:
        for t in tokens:
            state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
            used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
            print(f"{t.id:>4}  {t.name}  {t.role}  {t.prefix}…  created {t.created_at:%Y-%m-%d %H:%M}  last used {used}  {state}", file=out)
    return 0


COMMANDS = {"serve": cmd_serve, "token": cmd_token}
