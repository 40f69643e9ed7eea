import re

import pytest

from shared.config import SETTINGS, Config, ConfigError, PROJECT_ROOT


def test_defaults_are_valid():
    cfg = Config.from_env({})
    assert cfg.comfyui_urls == ("http://127.0.0.1:8188",)
    assert cfg.signed_url_ttl == 3600
    assert cfg.storage_url.startswith("file://")
    assert cfg.database_url is None and cfg.dev_login is False


@pytest.mark.parametrize("env, variable", [
    ({"DATABASE_URL": "postgres://x/y"}, "DATABASE_URL"),
    ({"DATABASE_URL": "mysql://root@localhost"}, "DATABASE_URL"),
    ({"COMFYUI_URLS": "ftp://a"}, "COMFYUI_URLS"),
    ({"COMFYUI_URLS": "http://a:1,http://a:1"}, "COMFYUI_URLS"),
    ({"STORAGE_URL": "gs://bucket"}, "STORAGE_URL"),
    ({"SIGNED_URL_TTL": "ten"}, "SIGNED_URL_TTL"),
    ({"SIGNED_URL_TTL": "5"}, "SIGNED_URL_TTL"),
    ({"DEV_LOGIN": "maybe"}, "DEV_LOGIN"),
    ({"PUBLIC_BASE_URL": "example.com"}, "PUBLIC_BASE_URL"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"COMFYUI_TIMEOUT": "-1"}, "COMFYUI_TIMEOUT"),
    ({"COMFYUI_TIMEOUT": "inf"}, "COMFYUI_TIMEOUT"),
    ({"WATCHDOG_S": "1e999"}, "WATCHDOG_S"),
    ({"RUN_TIMEOUT_S": "nan"}, "RUN_TIMEOUT_S"),
])
def test_invalid_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=f"^{variable}:"):
        Config.from_env(env)


def test_parsed_values():
    cfg = Config.from_env({"DATABASE_URL": "mysql://u:p%40ss@db.example:3307/gw",
                           "COMFYUI_URLS": "http://a:8188, http://b:8188/", "DEV_LOGIN": "true"})
    assert (cfg.database_url.host, cfg.database_url.port, cfg.database_url.password) == ("db.example", 3307, "p@ss")
    assert cfg.comfyui_urls == ("http://a:8188", "http://b:8188")
    assert cfg.dev_login is True


def test_secrets_never_in_repr():
    cfg = Config.from_env({"SECRET_KEY": "supersecretvalue123", "ADMIN_TOKEN": "admintok",
                           "DATABASE_URL": "mysql://u:dbpass@h/db"})
    text = repr(cfg) + str(cfg.database_url)
    assert "supersecretvalue123" not in text and "admintok" not in text and "dbpass" not in text


def test_readme_table_lists_exactly_the_settings():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", section, flags=re.M))
    assert documented == {s.env for s in SETTINGS}


@pytest.mark.parametrize("secret, ok", [("short", False), ("whsec_!!!", False), ("whsec_c2hvcnQ=", False),
                                        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", True), ("x" * 24, True)])
def test_webhook_secrets_are_checked_at_start(secret, ok):
    env = {"WEBHOOK_URL": "https://hooks.example.com/gw", "WEBHOOK_SECRET": secret}
    if ok:
        assert Config.from_env(env).webhook_secret == secret
    else:
        with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
            Config.from_env(env)
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET: must be set together with WEBHOOK_URL"):
        Config.from_env({"WEBHOOK_URL": "https://hooks.example.com/gw"})


@pytest.mark.parametrize("env, error", [
    ({"MODERATION": "wechat"}, "MODERATION: wechat needs WECHAT_APPID"),
    ({"MODERATION": "wechat", "WECHAT_APPID": "wx1", "WECHAT_SECRET": "s"}, "WECHAT_PUSH_TOKEN: required"),
    ({"MODERATION": "wechat", "WECHAT_APPID": "wx1", "WECHAT_SECRET": "s", "WECHAT_PUSH_TOKEN": "t"},
     "WECHAT_PUSH_AES_KEY: required"),
    ({"MODERATION_DEADLINE_S": "700000"}, "MODERATION_DEADLINE_S: must be at most"),
    ({"MODERATION": "wechat", "WECHAT_APPID": "wx1", "WECHAT_SECRET": "s", "WECHAT_PUSH_TOKEN": "t",
      "WECHAT_PUSH_AES_KEY": "short"}, "WECHAT_PUSH_AES_KEY"),
    ({"MODERATION": "webhook"}, "MODERATION_WEBHOOK_URL: MODERATION=webhook needs it"),
    ({"MODERATION": "webhook", "MODERATION_WEBHOOK_URL": "https://mod.example.com/check",
      "MODERATION_WEBHOOK_SECRET": "short"}, "MODERATION_WEBHOOK_SECRET: must be"),
    ({"MODERATION": "sometimes"}, "MODERATION: must be none, wechat or webhook"),
    ({"MODERATION_FAIL": "maybe"}, "MODERATION_FAIL"),
    ({"MODERATION_SCENE": "5"}, "MODERATION_SCENE: must be at most 4"),
])
def test_moderation_settings_are_checked_at_start(env, error):
    with pytest.raises(ConfigError, match=f"^{re.escape(error)}"):
        Config.from_env(env)


def test_moderation_settings_that_work():
    from shared.wxpush import new_aes_key
    cfg = Config.from_env({"MODERATION": "wechat", "WECHAT_APPID": "wx1", "WECHAT_SECRET": "s",
                           "WECHAT_PUSH_TOKEN": "push-token-value-9", "WECHAT_PUSH_AES_KEY": new_aes_key()})
    assert (cfg.moderation, cfg.moderation_fail, cfg.moderation_outputs, cfg.moderation_deadline_s) == \
        ("wechat", "closed", "hold", 1800.0)
    assert "push-token-value-9" not in repr(cfg) and cfg.wechat_push_aes_key not in repr(cfg)
    hook = Config.from_env({"MODERATION": "webhook", "MODERATION_WEBHOOK_URL": "https://mod.example.com/check",
                            "MODERATION_WEBHOOK_SECRET": "x" * 24, "MODERATION_OUTPUTS": "publish"})
    assert hook.moderation_outputs == "publish"
