"""Subscribe messages on their own: the WECHAT_SUBSCRIBE_* settings, the placeholders, the rendered message."""

from __future__ import annotations

import json

import pytest

from shared.config import Config, ConfigError
from shared.subscribe import PLACEHOLDERS, message, parse_data

BASE = {"WECHAT_APPID": "wx1", "WECHAT_SECRET": "s3cr3t-value", "WECHAT_SUBSCRIBE_TEMPLATE_ID": "tmpl-1"}
DATA = {"thing1": "{workflow_title}", "phrase2": "{status_text}", "time3": "{finished_at}"}


def config(**env) -> Config:
    return Config.from_env({**BASE, "WECHAT_SUBSCRIBE_DATA": json.dumps(DATA), **env})


def test_defaults_and_parsed_values():
    cfg = Config.from_env({})
    assert (cfg.wechat_subscribe_template_id, cfg.wechat_subscribe_data, cfg.wechat_subscribe_page,
            cfg.wechat_miniprogram_state) == (None, None, "pages/index/index", "formal")
    cfg = config(WECHAT_SUBSCRIBE_PAGE="pages/result/result", WECHAT_MINIPROGRAM_STATE="Trial")
    assert cfg.wechat_subscribe_data == tuple(DATA.items())
    assert (cfg.wechat_subscribe_page, cfg.wechat_miniprogram_state) == ("pages/result/result", "trial")
    hash(cfg)  # still a frozen, hashable config


@pytest.mark.parametrize("env, variable", [
    ({"WECHAT_SUBSCRIBE_DATA": "not json"}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": "[]"}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": "{}"}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": '{"thing1": "{user}"}'}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": '{"thing1": "{status!r}"}'}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": '{"thing1": "{status:>30}"}'}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": '{"thing1": "{job_id.__class__}"}'}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": '{"thing1": "{0}"}'}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": '{"thing1": "{status"}'}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": '{"thing1": 5}'}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": '{"Thing1": "x"}'}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_SUBSCRIBE_DATA": '{"thing": "x"}'}, "WECHAT_SUBSCRIBE_DATA"),
    ({"WECHAT_MINIPROGRAM_STATE": "beta"}, "WECHAT_MINIPROGRAM_STATE"),
    ({"WECHAT_SUBSCRIBE_PAGE": "pages/a b"}, "WECHAT_SUBSCRIBE_PAGE"),
    ({"WECHAT_SUBSCRIBE_PAGE": "pages/a#x"}, "WECHAT_SUBSCRIBE_PAGE"),
])
def test_invalid_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=f"^{variable}:"):
        config(**env)


@pytest.mark.parametrize("env, message", [
    ({**BASE}, "WECHAT_SUBSCRIBE_DATA: must be set together with"),
    ({"WECHAT_SUBSCRIBE_DATA": json.dumps(DATA)}, "WECHAT_SUBSCRIBE_TEMPLATE_ID: must be set together with"),
    ({"WECHAT_SUBSCRIBE_TEMPLATE_ID": "t", "WECHAT_SUBSCRIBE_DATA": json.dumps(DATA)},
     "WECHAT_SUBSCRIBE_TEMPLATE_ID: needs WECHAT_APPID"),
])
def test_settings_that_need_each_other(env, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        Config.from_env(env)


def test_every_placeholder_and_literal_braces_are_accepted():
    text = " ".join("{" + p + "}" for p in PLACEHOLDERS) + " {{literal}}"
    assert parse_data(json.dumps({"thing1": text, "character_string2": "{job_id}"})) == (
        ("thing1", text), ("character_string2", "{job_id}"))


PAYLOAD = {"touser": "o-1", "job_id": "6cc31eba-9053-4126-8405-11c95b3f07c4", "workflow": "txt2img",
           "status": "cancelled", "finished_at": "2026-12-01T04:00:00.250Z"}


def test_the_message_of_a_job():
    cfg = config(WECHAT_SUBSCRIBE_DATA=json.dumps({**DATA, "thing4": "{workflow_title}: {status} ({workflow}) ok",
                                                   "character_string5": "{job_id}", "short_thing6": "{{x}}"}),
                 WECHAT_MINIPROGRAM_STATE="developer")
    body = message(cfg, PAYLOAD, "一个很长很长的工作流标题，超过了二十个字的限制啊")
    assert body == {
        "touser": "o-1", "template_id": "tmpl-1", "page": "pages/index/index?job=" + PAYLOAD["job_id"],
        "data": {"thing1": {"value": "一个很长很长的工作流标题，超过了二十个…"},   # 20 characters: thing's limit
                 "phrase2": {"value": "已取消"},
                 "time3": {"value": "2026-12-01 12:00:00"},                            # Asia/Shanghai
                 "thing4": {"value": "一个很长很长的工作流标题，超过了二十个…"},
                 "character_string5": {"value": PAYLOAD["job_id"][:31] + "…"},        # 32
                 "short_thing6": {"value": "{x}"}},
        "miniprogram_state": "developer", "lang": "zh_CN"}
    assert len(body["data"]["thing1"]["value"]) == 20


@pytest.mark.parametrize("status, text", [("succeeded", "成功"), ("failed", "失败"), ("cancelled", "已取消")])
def test_status_texts_and_a_page_with_a_query(status, text):
    cfg = config(WECHAT_SUBSCRIBE_PAGE="pages/job/job?from=push")
    body = message(cfg, {**PAYLOAD, "status": status}, None)
    assert body["data"]["phrase2"] == {"value": text}
    assert body["data"]["thing1"] == {"value": "txt2img"}  # no title: the name
    assert body["page"] == "pages/job/job?from=push&job=" + PAYLOAD["job_id"]
