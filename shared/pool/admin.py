"""`gateway backends ...`: operators look at and steer the pool of ComfyUI servers.

    gateway backends list [--json]        every server: state, owner listener, slots, checkpoints, last event
    gateway backends drain URL            take no new jobs there; what it holds finishes
    gateway backends resume URL           take new jobs again
    gateway backends refresh [URL ...]    re-read /object_info now (every server without URL)
    gateway backends slots URL N|default  how many prompts the server may hold at once

Everything is kept in MySQL, so it holds across every instance and restart.
A URL must be one of COMFYUI_URLS, spelled the same.
"""

from __future__ import annotations

import json
import sys
import time

from shared import backends
from shared.db import Database, isoformat

REFRESH_WAIT_S = 30.0


def _url(cfg, url: str) -> str:
    url = url.rstrip("/")
    if url not in cfg.comfyui_urls:
        sys.exit(f"gateway: {url} is not one of COMFYUI_URLS ({', '.join(cfg.comfyui_urls)})")
    return url


def _db(cfg) -> Database:
    if cfg.database_url is None:
        sys.exit("gateway: configuration error: DATABASE_URL: must be set for `gateway backends`")
    return Database(cfg.database_url)


def cmd_list(cfg, args) -> int:
    with _db(cfg).connection() as conn:
        rows = backends.pool_status(conn, cfg.comfyui_urls, default_slots=cfg.comfyui_slots, lease_s=cfg.lease_s)
    if args.json:
        for r in rows:
            print(json.dumps({**r, "capabilities_at": isoformat(r["capabilities_at"]),
                              "last_event_at": isoformat(r["last_event_at"])}))
        return 0
    print(f"{'URL':<32} {'STATE':<10} {'OWNER':<28} {'SLOTS':<6} {'STANDBY':<8} {'LAST EVENT':<24} CHECKPOINTS")
    for r in rows:
        print(f"{r['url']:<32} {r['state']:<10} {(r['owner'] or '-'):<28} "
              f"{r['slots_in_use']}/{r['slots']:<4} {('yes' if r['standby_alive'] else 'no'):<8} "
              f"{(isoformat(r['last_event_at']) or '-'):<24} {', '.join(r['checkpoints']) or '-'}")
    return 0


def cmd_state(cfg, args, state: str) -> int:
    url = _url(cfg, args.url)
    with _db(cfg).connection() as conn:
        backends.set_state(conn, url, state)
    print(f"{url}: {'draining (takes no new jobs; what it holds finishes)' if state == 'draining' else 'active'}")
    return 0


def cmd_refresh(cfg, args) -> int:
    """Ask the owning listeners to re-read /object_info, and wait until they have."""
    urls = [_url(cfg, u) for u in args.urls] or list(cfg.comfyui_urls)
    db = _db(cfg)
    with db.connection() as conn:
        backends.request_refresh(conn, urls)
    deadline = time.monotonic() + args.wait
    pending = set(urls)
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        with db.connection() as conn:
            pending = {u for u in pending if backends.find(conn, u)["refresh_requested"]}
    for url in urls:
        print(f"{url}: {'not read yet (is its listener connected?)' if url in pending else 'capabilities read'}")
    return 1 if pending else 0


def cmd_slots(cfg, args) -> int:
    url = _url(cfg, args.url)
    if args.slots == "default":
        slots = None
    else:
        try:
            slots = int(args.slots)
        except ValueError:
            slots = 0
        if not 1 <= slots <= 64:
            sys.exit("gateway: slots must be a whole number from 1 to 64, or 'default'")
    with _db(cfg).connection() as conn:
        backends.set_slots(conn, url, slots)
    print(f"{url}: {slots or cfg.comfyui_slots} slot(s){' (COMFYUI_SLOTS)' if slots is None else ''}")
    return 0


def add_parser(sub, config) -> None:
    """Register `gateway backends ...`; ``config()`` builds the Config when a command runs."""
    cmds = sub.add_parser("backends", help="the pool of ComfyUI servers").add_subparsers(dest="backends_command",
                                                                                        required=True)
    listing = cmds.add_parser("list", help="every server with its state")
    listing.add_argument("--json", action="store_true", help="one JSON object per server")
    listing.set_defaults(func=lambda a: cmd_list(config(), a))
    for name, state, text in (("drain", "draining", "take no new jobs there"), ("resume", "active", "take jobs again")):
        p = cmds.add_parser(name, help=text)
        p.add_argument("url")
        p.set_defaults(func=lambda a, state=state: cmd_state(config(), a, state))
    refresh = cmds.add_parser("refresh", help="re-read /object_info now")
    refresh.add_argument("urls", nargs="*")
    refresh.add_argument("--wait", type=float, default=REFRESH_WAIT_S, help="seconds to wait for the listeners")
    refresh.set_defaults(func=lambda a: cmd_refresh(config(), a))
    slots = cmds.add_parser("slots", help="prompts a server may hold at once")
    slots.add_argument("url")
    slots.add_argument("slots", help="1 to 64, or 'default' for COMFYUI_SLOTS")
    slots.set_defaults(func=lambda a: cmd_slots(config(), a))
