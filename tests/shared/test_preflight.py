"""`gateway check` (shared/preflight.py) against a healthy stack and against each broken part:
the real database, local storage and s3rver, the fake ComfyUI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from shared.db import connect
from shared.localdb import free_port
from shared.preflight import run_checks
from tests.fakes.comfyui import FakeComfy
from tests.stack import PROJECT_ROOT, config_env, start_api

WORKFLOWS = PROJECT_ROOT / "workflows"


@pytest.fixture
def fake():
    with FakeComfy() as f:
        yield f


@pytest.fixture
def env(make_config, fake, db_conn):
    """The environment of a healthy deployment (local storage; its PUBLIC_BASE_URL not running)."""
    cfg = make_config(COMFYUI_URLS=fake.base_url, PUBLIC_BASE_URL=f"http://127.0.0.1:{free_port()}")
    return config_env(cfg)


def check(environ: dict) -> tuple[bool, dict[str, str]]:
    """Run every check in-process: (all ok, line per item name)."""
    lines: list[str] = []
    ok = run_checks(environ, out=lines.append)
    items = {}
    for line in lines:
        status, rest = line.split(None, 1)
        name, _, detail = rest.partition(": ")
        assert status in ("ok", "FAIL"), line
        items[name] = f"{status} {detail}"
    return ok, items


def failed(items: dict[str, str]) -> dict[str, str]:
    return {name: text for name, text in items.items() if text.startswith("FAIL")}


def test_a_healthy_deployment_passes_every_check(env, fake):
    ok, items = check(env)
    assert ok, items
    assert set(items) == {"settings", "database", "storage", f"comfyui {fake.base_url}", "workflow img2img",
                          "workflow txt2img"}
    assert items["database"].endswith("reachable, schema up to date")
    # Local storage whose API is not running: the signature is checked by the store itself, and said so.
    assert "signed link checked by the store's own verify" in items["storage"]
    assert "is not running here" in items["storage"]
    assert items[f"comfyui {fake.base_url}"].startswith("ok ComfyUI 0.8.0")
    assert items["workflow txt2img"] == f"ok runs on {fake.base_url}"


def test_the_command_exits_zero_and_fetches_local_links_over_http_when_the_api_runs(make_config, fake, db_conn,
                                                                                    tmp_path):
    cfg = make_config(COMFYUI_URLS=fake.base_url)
    api, base = start_api(cfg, tmp_path)
    try:
        import os
        out = subprocess.run([sys.executable, "-m", "shared.cli", "check"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=120, env={**os.environ, **config_env(cfg), "PUBLIC_BASE_URL": base})
    finally:
        api.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "all checks passed" and all(line.startswith("ok ") for line in lines[:-1]), lines
    assert any(line.startswith("ok    storage: ") and "put, signed GET over HTTP, delete" in line for line in lines)


def test_s3_storage_is_fetched_through_its_presigned_url(env, s3rver):
    ok, items = check({**env, "STORAGE_URL": f"s3://{s3rver.bucket}/check-{time.time_ns()}",
                       "S3_ENDPOINT_URL": s3rver.endpoint_url})
    assert ok, items
    assert items["storage"].startswith("ok s3://") and items["storage"].endswith("put, signed GET over HTTP, delete")


def test_every_failure_exits_non_zero(env):
    out = subprocess.run([sys.executable, "-m", "shared.cli", "check"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=120, env={**env, "COMFYUI_URLS": f"http://127.0.0.1:{free_port()}"})
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1] == "some checks FAILED"


def test_invalid_settings(env):
    ok, items = check({**env, "SIGNED_URL_TTL": "soon"})
    assert not ok and list(items) == ["settings"] and "SIGNED_URL_TTL" in items["settings"]
    ok, items = check({**env, "SECRET_KEY": ""})
    assert not ok and "SECRET_KEY" in failed(items)["settings"]


def test_database_unreachable(env):
    ok, items = check({**env, "DATABASE_URL": f"mysql://root:@127.0.0.1:{free_port()}/nothing"})
    assert not ok and set(failed(items)) == {"database"}
    assert "cannot be reached" in items["database"]


def test_database_not_migrated(env, database_url):
    name = f"gw_check_{uuid.uuid4().hex[:8]}"
    admin = connect(database_url, database=False)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        url = f"mysql://{database_url.user}:{database_url.password}@{database_url.host}:{database_url.port}/{name}"
        ok, items = check({**env, "DATABASE_URL": url})
        assert not ok and set(failed(items)) == {"database"}
        assert "0001_init.sql" in items["database"] and "run `gateway migrate`" in items["database"]
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def test_database_one_file_behind(env, db_conn):
    with db_conn.cursor() as cur:
        cur.execute("SELECT version, name FROM schema_migrations ORDER BY version DESC LIMIT 1")
        version, name = cur.fetchone().values()
        cur.execute("DELETE FROM schema_migrations WHERE version=%s", (version,))
    try:
        ok, items = check(env)
        assert not ok and items["database"].startswith("FAIL ")
        assert f"lacks 1 schema file(s) ({name})" in items["database"]
    finally:
        with db_conn.cursor() as cur:
            cur.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, UTC_TIMESTAMP())",
                        (version, name))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_storage_failing(env, tmp_path, where, request):
    if where == "local":
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        broken = {"STORAGE_URL": (blocker / "storage").as_uri()}
    else:
        s3 = request.getfixturevalue("s3rver")
        broken = {"STORAGE_URL": "s3://no-such-bucket/x", "S3_ENDPOINT_URL": s3.endpoint_url}
    ok, items = check({**env, **broken})
    assert not ok and set(failed(items)) == {"storage"}, items
    assert "writing gateway-check/" in items["storage"]


def test_comfyui_down(env):
    down = f"http://127.0.0.1:{free_port()}"
    ok, items = check({**env, "COMFYUI_URLS": down})
    assert not ok
    assert set(failed(items)) == {f"comfyui {down}", "workflow img2img", "workflow txt2img"}
    assert "does not answer (ComfyUnreachableError" in items[f"comfyui {down}"]
    assert items["workflow txt2img"] == "FAIL no ComfyUI server answered"


def _workflows_with_custom_node(tmp_path) -> str:
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(WORKFLOWS / "txt2img.json", folder / "txt2img.json")
    doc = json.loads((WORKFLOWS / "txt2img.json").read_text())
    doc["graph"]["90"] = {"class_type": "FaceRestore", "inputs": {"image": ["8", 0]}}
    doc["title"] = "Restored"
    (folder / "restore.json").write_text(json.dumps(doc))
    return str(folder)


def test_a_workflow_with_a_node_class_no_server_has(env, fake, tmp_path):
    ok, items = check({**env, "WORKFLOWS_DIR": _workflows_with_custom_node(tmp_path)})
    assert not ok and set(failed(items)) == {"workflow restore"}
    assert items["workflow restore"] == f"FAIL no server can run it: {fake.base_url} lacks node class FaceRestore"
    assert items["workflow txt2img"].startswith("ok")


def test_a_workflow_runnable_on_one_server_of_two_passes(env, fake, tmp_path):
    with FakeComfy(extra_nodes=["FaceRestore"]) as pack:
        ok, items = check({**env, "WORKFLOWS_DIR": _workflows_with_custom_node(tmp_path),
                           "COMFYUI_URLS": f"{fake.base_url},{pack.base_url}"})
    assert ok, items
    assert items["workflow restore"] == f"ok runs on {pack.base_url}"
    assert items["workflow txt2img"] == f"ok runs on {fake.base_url}, {pack.base_url}"


def test_a_default_the_server_does_not_offer(env):
    with FakeComfy(checkpoints=("other.safetensors",)) as other:
        ok, items = check({**env, "COMFYUI_URLS": other.base_url})
    assert not ok and set(failed(items)) == {"workflow txt2img", "workflow img2img"}
    assert "lacks ckpt_name 'v1-5-pruned-emaonly.safetensors'" in items["workflow txt2img"]


def test_wechat_is_checked_when_it_is_configured(env, fake):
    from tests.fakes.wechat import FakeWeChat
    with FakeWeChat(appid="wx-check") as wx:
        wechat = {**env, "WECHAT_API_BASE": wx.url, "WECHAT_APPID": wx.appid, "WECHAT_SECRET": wx.secret,
                  "WECHAT_TIMEOUT": "1"}
        ok, items = check(wechat)
        assert ok and items["wechat"] == "ok access token of wx-check ok", items
        wx.outage()
        with connect(config_env_url(env)) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM wechat_tokens")  # no stored token to fall back on
        ok, items = check(wechat)
        assert not ok and failed(items) == {"wechat": items["wechat"]}
        assert items["wechat"].startswith("FAIL no access token for wx-check")
        assert wx.secret not in items["wechat"]


def config_env_url(env: dict):
    from shared.config import DatabaseUrl
    return DatabaseUrl.parse(env["DATABASE_URL"])


@pytest.mark.parametrize("database", ["down", "unmigrated"])
def test_wechat_with_a_failed_database_is_a_line_not_a_crash(env, database_url, database):
    """The access token is read from MySQL first: a database that failed its item makes wechat a FAIL line."""
    import os
    name = f"gw_check_{uuid.uuid4().hex[:8]}"
    admin = connect(database_url, database=False)
    try:
        if database == "down":
            url = f"mysql://root:@127.0.0.1:{free_port()}/nothing"
        else:
            with admin.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}`")
            url = (f"mysql://{database_url.user}:{database_url.password}@{database_url.host}:{database_url.port}"
                   f"/{name}")
        wechat = {**env, "DATABASE_URL": url, "WECHAT_APPID": "wx-check", "WECHAT_SECRET": "s3cr3t-value",
                  "WECHAT_API_BASE": f"http://127.0.0.1:{free_port()}", "WECHAT_TIMEOUT": "1"}
        out = subprocess.run([sys.executable, "-m", "shared.cli", "check"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=120, env={**os.environ, **wechat})
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "some checks FAILED", lines
    assert any(line.startswith("FAIL  database: ") for line in lines), lines
    assert "FAIL  wechat: not checked: the access token is kept in the database, which failed" in lines, lines
    assert any(line.startswith("ok    storage: ") for line in lines), lines  # the later items still ran
    assert "s3cr3t-value" not in out.stdout + out.stderr


def test_wechat_failing_on_anything_is_a_failed_item(env, fake):
    """Not only WeChatError: whatever the token store raises becomes a FAIL line without the secret."""
    from shared.config import Config
    from shared.context import Context
    from shared.preflight import check_wechat

    class Broken:
        def access_token(self):
            raise RuntimeError("SELECT ... secret=s3cr3t-value")

    ctx = Context(Config.from_env({**env, "WECHAT_APPID": "wx-check", "WECHAT_SECRET": "s3cr3t-value"}))
    ctx.__dict__["wechat_tokens"] = Broken()
    item = check_wechat(ctx)
    assert item is not None and not item.ok
    assert item.line() == "FAIL  wechat: no access token for wx-check: RuntimeError"
