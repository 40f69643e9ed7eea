"""`gateway check`: is this deployment ready? One line per item, ok or FAIL with the reason.

    gateway check        settings, database (reachable, migrated), storage (put, signed GET,
                         delete), every ComfyUI server of COMFYUI_URLS, every workflow runnable
                         on at least one of them, WeChat's access token (with WECHAT_APPID);
                         exit status 1 if anything failed

Run it with the environment `gateway serve` and `gateway listen` get. It changes nothing but
one object it writes under ``gateway-check/`` and deletes again and, with WECHAT_APPID, the
stored WeChat access token: when none is stored or it is about to expire, the check fetches a
fresh one and stores it (in ``wechat_tokens``) as the API would on its next use.
"""

from __future__ import annotations

import copy
import sys
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

CHECK_PREFIX = "gateway-check"
HTTP_TIMEOUT_S = 10.0


@dataclass
class Item:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<4}  {self.name}: {self.detail}"


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# -- the items ------------------------------------------------------------------------------------

def check_settings(environ=None):
    """(Config or None, items): the settings parse, and what `gateway serve` needs is there."""
    from shared.config import Config, ConfigError
    try:
        cfg = Config.from_env(environ)
    except ConfigError as e:
        return None, [Item("settings", False, str(e))]
    problems = []
    try:
        cfg.require_secret_key()
    except ConfigError as e:
        problems.append(str(e))
    if cfg.database_url is None:
        problems.append("DATABASE_URL: must be set (only `gateway dev` starts a database)")
    if problems:
        return cfg, [Item("settings", False, "; ".join(problems))]
    return cfg, [Item("settings", True, "valid")]


def check_database(cfg) -> Item:
    from shared.db import connect
    from shared.migrate import pending
    url = cfg.database_url
    where = f"{url.host}:{url.port}/{url.database}"
    try:
        conn = connect(url)
    except Exception as e:
        return Item("database", False, f"{where} cannot be reached ({_reason(e)})")
    try:
        missing = pending(conn)
    except Exception as e:
        return Item("database", False, f"{where}: could not read the schema version ({_reason(e)})")
    finally:
        conn.close()
    if missing:
        return Item("database", False, f"{where} lacks {len(missing)} schema file(s) ({', '.join(missing[:3])}"
                                       f"{', ...' if len(missing) > 3 else ''}): "
                                       "run `gateway migrate`")
    return Item("database", True, f"{where} reachable, schema up to date")


def check_storage(cfg, *, session=None) -> Item:
    """Put an object, fetch it through its signed link, delete it."""
    import requests

    from shared.storage import LocalStore, open_store
    session = session or requests.Session()
    try:
        store = open_store(cfg)
    except Exception as e:
        return Item("storage", False, f"{cfg.storage_url}: {_reason(e)}")
    key = f"{CHECK_PREFIX}/{uuid.uuid4().hex}.txt"
    body = f"gateway check {key}\n".encode()
    try:
        store.put_bytes(key, body, "text/plain")
    except Exception as e:
        return Item("storage", False, f"{cfg.storage_url}: writing {key} failed ({_reason(e)})")
    try:
        url, _ = store.signed_url(key, 300)
        how = _fetch(session, url, body)
        if how is not None and isinstance(store, LocalStore):
            # PUBLIC_BASE_URL (the API) does not answer here: check the link the way the API would.
            how = _verify_local(store, key, url, body, how)
        elif how is not None:
            raise _CheckFailed(how)
    except _CheckFailed as e:
        _delete(store, key)
        return Item("storage", False, f"{cfg.storage_url}: {e}")
    except Exception as e:
        _delete(store, key)
        return Item("storage", False, f"{cfg.storage_url}: signed link failed ({_reason(e)})")
    try:
        store.delete(key)
    except Exception as e:
        return Item("storage", False, f"{cfg.storage_url}: deleting {key} failed ({_reason(e)})")
    return Item("storage", True, f"{cfg.storage_url}: put, {how or 'signed GET over HTTP'}, delete")


class _CheckFailed(Exception):
    pass


def _fetch(session, url: str, body: bytes) -> str | None:
    """GET the signed link; None when it returned the object, else why not (connection errors: as text)."""
    import requests
    try:
        resp = session.get(url, timeout=HTTP_TIMEOUT_S)
    except requests.RequestException as e:
        return f"it does not answer: {type(e).__name__}"
    if resp.status_code != 200:
        raise _CheckFailed(f"signed GET answered HTTP {resp.status_code}")
    if resp.content != body:
        raise _CheckFailed("signed GET returned other bytes than were written")
    return None


def _verify_local(store, key: str, url: str, body: bytes, why: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    linked = unquote(parts.path.partition("/v1/files/")[2])
    if linked != key:
        raise _CheckFailed(f"signed link names {linked!r}, not {key!r}")
    f, _, _ = store.open_signed(key, query["expires"][0], query["signature"][0])
    with f:
        if f.read() != body:
            raise _CheckFailed("the signed link opens other bytes than were written")
    return (f"signed link checked by the store's own verify (LocalStore.open_signed), not fetched: "
            f"PUBLIC_BASE_URL {store.public_base_url} is not running here ({why})")


def _delete(store, key: str) -> None:
    try:
        store.delete(key)
    except Exception:
        pass


def check_wechat(ctx) -> Item | None:
    """With WECHAT_APPID: WeChat hands out an access token (subscribe pushes, content security need it).

    The token is stored in the database: run this only once the database item passed.
    """
    if ctx.wechat_tokens is None:
        return None
    from shared.wechat import WeChatError
    try:
        ctx.wechat_tokens.access_token()
    except WeChatError as e:
        return Item("wechat", False, f"no access token for {ctx.config.wechat_appid}: {e}")
    except Exception as e:
        # The stored token is read first (the database); a surprise here is a failed item, not a crash.
        # Only the exception's type: its text could quote a request that carries the secret.
        return Item("wechat", False, f"no access token for {ctx.config.wechat_appid}: {type(e).__name__}")
    uses = [u for u, on in (("content security", ctx.config.moderation == "wechat"),
                            ("subscribe messages", bool(ctx.config.wechat_subscribe_template_id))) if on]
    return Item("wechat", True, f"access token of {ctx.config.wechat_appid} ok" + (f" ({', '.join(uses)})" if uses else ""))


def check_servers(ctx) -> tuple[list[Item], dict[str, dict]]:
    """Each ComfyUI server answers /system_stats and /object_info; returns the object_info of those that do."""
    items, infos = [], {}
    for url in ctx.config.comfyui_urls:
        comfy = ctx.comfy(url)
        try:
            stats = comfy.system_stats()
            info = comfy.object_info()
        except Exception as e:
            items.append(Item(f"comfyui {url}", False, f"does not answer ({_reason(e)})"))
            continue
        version = ((stats or {}).get("system") or {}).get("comfyui_version") if isinstance(stats, dict) else None
        infos[url] = info
        items.append(Item(f"comfyui {url}", True,
                          f"ComfyUI {version or '(version unknown)'}, {len(info)} node classes"))
    return items, infos


def workflow_lacks(workflow, caps: dict) -> list[str]:
    """What a server with these capabilities lacks to run the workflow with its defaults (empty: nothing).

    Values an app chooses (required and random params, image inputs) are not judged, but an
    ``enum_from`` param needs at least one choice there.
    """
    from shared.pool import capabilities
    skip = set(workflow.input_targets())
    graph = copy.deepcopy(workflow.graph)
    for spec in workflow.params.values():
        targets = {(t.node_id, t.input) for t in spec.targets}
        if spec.required or spec.random_default:
            skip |= targets
        elif spec.default is not None:
            for node_id, name in targets:
                graph[node_id]["inputs"][name] = spec.default
    needs = capabilities.needs_of(graph, (caps.get("choices") or {}).keys(), skip=skip)
    lacks = capabilities.missing(needs, caps)
    for spec in workflow.params.values():
        if spec.enum_from and not (caps.get("choices") or {}).get(spec.enum_from) \
                and spec.enum_from.rpartition(".")[0] in set(caps.get("classes") or ()):
            lacks.append(f"choices for {spec.enum_from}")
    return lacks


def check_workflows(cfg, infos: dict[str, dict]) -> list[Item]:
    from shared.pool import capabilities
    from shared.workflows import load_workflows
    workflows, problems = load_workflows(cfg.workflows_dir)
    items = [Item("workflow file", False, problem) for problem in problems]
    if not workflows and not problems:
        items.append(Item("workflows", False, f"no workflow files in {cfg.workflows_dir}"))
    needed = capabilities.workflow_classes(workflows)
    caps = {url: capabilities.from_object_info(info, needed) for url, info in infos.items()}
    for name, workflow in sorted(workflows.items()):
        able, why = [], []
        for url, offered in caps.items():
            lacks = workflow_lacks(workflow, offered)
            if lacks:
                why.append(f"{url} lacks {', '.join(lacks)}")
            else:
                able.append(url)
        if able:
            items.append(Item(f"workflow {name}", True, f"runs on {', '.join(able)}"))
        elif not caps:
            items.append(Item(f"workflow {name}", False, "no ComfyUI server answered"))
        else:
            items.append(Item(f"workflow {name}", False, "no server can run it: " + "; ".join(why)))
    return items


def run_checks(environ=None, *, out=print) -> bool:
    """Run every check, printing each line as it is known; True when all passed."""
    from shared.context import Context
    cfg, items = check_settings(environ)
    for item in items:
        out(item.line())
    if cfg is None:
        return False
    ok = all(i.ok for i in items)
    database_ok = False
    if cfg.database_url is not None:
        item = check_database(cfg)
        out(item.line())
        ok &= item.ok
        database_ok = item.ok
    item = check_storage(cfg)
    out(item.line())
    ok &= item.ok
    ctx = Context(cfg, bounded=False)
    # The access token is read from and stored in the database: without a working one, say so instead.
    wechat = check_wechat(ctx) if database_ok else None
    if wechat is None and cfg.database_url is not None and not database_ok and cfg.wechat_appid \
            and cfg.wechat_secret:
        wechat = Item("wechat", False, "not checked: the access token is kept in the database, which failed")
    if wechat is not None:
        out(wechat.line())
        ok &= wechat.ok
    servers, infos = check_servers(ctx)
    for item in servers + check_workflows(cfg, infos):
        out(item.line())
        ok &= item.ok
    return ok


def cmd_check(args) -> int:
    ok = run_checks()
    print("all checks passed" if ok else "some checks FAILED", flush=True)
    return 0 if ok else 1


def add_parser(sub, config=None) -> None:
    """Register `gateway check` (it builds the Config itself: an invalid one is a failed item, not an exit)."""
    sub.add_parser("check", help="pre-flight: settings, database, storage, ComfyUI servers, workflows").set_defaults(
        func=cmd_check)


if __name__ == "__main__":
    sys.exit(cmd_check(None))
