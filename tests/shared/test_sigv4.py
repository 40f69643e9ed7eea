"""shared.storage.sigv4: presigned GET URLs without botocore, byte for byte what botocore makes.

Each case signs the same object at the same frozen time with botocore (a client from
make_s3_client, as the gateway had it) and with the presigner, across endpoints,
regions, addressing styles, buckets, keys, expiries and credentials with and
without a session token. Then s3rver checks real links, and the cases where
botocore must sign (credentials elsewhere, settings not modelled) are checked
to fall back to it.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from shared.storage import S3Settings, S3Store, make_s3_client, open_store
from shared.storage import sigv4
from shared.config import Config

NOW = 1_800_000_000  # 2027-01-15T08:00:00Z
TIMES = [(NOW, 900), (1_798_761_599, 1), (1_735_689_600, 604_800)]  # a year's last second; a week-long link
CREDENTIALS = [
    {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
    {"AWS_ACCESS_KEY_ID": "ASIA2EXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t+/=key",
     "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjE+/token==with/slash&amp;=and+plus"},
]
BUCKETS = ["pics", "gateway-prod-01", "my.bucket", "Upper", "ab", "a_b", "192.168.1.1", "bucket-", "x" * 63]
KEYS = ["users/u1/jobs/j1/9_0.png", "a b/c  d.png", "users/ü/图 片.webp", "x+y~z/(1)=&$@,;:'!*.png",
        "100%/%41%2F.json", "日本語/ключ/🙂.jpeg", "tilde~/plus+/space /slash/end.png"]
# (endpoint, region): AWS in each partition the presigner models, and S3 APIs with paths, ports, IPs, case.
PLACES = [
    (None, "us-east-1"), (None, "eu-west-3"), (None, "ap-guangzhou"), (None, "cn-north-1"),
    (None, "cn-northwest-1"), (None, "us-gov-west-1"),
    ("https://cos.ap-guangzhou.myqcloud.com", "ap-guangzhou"),
    ("https://oss-cn-hangzhou.aliyuncs.com", "oss-cn-hangzhou"),
    ("http://127.0.0.1:4568", "us-east-1"),
    ("http://localhost:9000", "eu-west-1"),
    ("https://minio.example.test:9000/s3", "us-east-1"),
    ("HTTPS://Storage.Example.Test:443", "cn-north-1"),
    ("http://storage.example.test:80/base/path", "us-west-2"), ("https://storage.example.test/trailing/", "us-east-1"),
]
STYLES = ["auto", "path", "virtual"]


@pytest.fixture
def plain_env(monkeypatch, tmp_path):
    """An environment like Lambda's: nothing of this machine's AWS setup (no shared config file)."""
    for name in (*sigv4._BOTOCORE_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CREDENTIAL_EXPIRATION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    fresh_boto3_session(monkeypatch)
    return monkeypatch


def fresh_boto3_session(monkeypatch) -> None:
    """boto3's default session keeps the credentials it found first: start a new one."""
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


def set_credentials(monkeypatch, credentials: dict) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if name in credentials:
            monkeypatch.setenv(name, credentials[name])
        else:
            monkeypatch.delenv(name, raising=False)
    fresh_boto3_session(monkeypatch)


def botocore_url(monkeypatch, client, bucket: str, key: str, ttl: int, issued: int) -> str:
    """What botocore itself presigns at ``issued`` (its clock frozen, nothing of ours involved)."""
    import botocore.auth
    import botocore.signers

    fixed = datetime.fromtimestamp(issued, tz=timezone.utc)
    with monkeypatch.context() as m:
        for module in (botocore.auth, botocore.signers):
            m.setattr(module, "get_current_datetime",
                      lambda remove_tzinfo=True: fixed.replace(tzinfo=None) if remove_tzinfo else fixed)
        return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl)


@pytest.mark.parametrize("endpoint, region", PLACES, ids=[f"{e or 'aws'}-{r}" for e, r in PLACES])
@pytest.mark.parametrize("style", STYLES)
def test_presigned_urls_are_what_botocore_makes(plain_env, endpoint, region, style):
    settings = S3Settings(endpoint, region, style)
    mismatches, checked = [], 0
    for credentials in CREDENTIALS:
        set_credentials(plain_env, credentials)
        client = settings.client()  # reads the credentials now, as the gateway's client would
        for bucket in BUCKETS:
            store = S3Store(None, bucket, settings=settings)
            for key, (issued, ttl) in itertools.product(KEYS, TIMES):
                ours, expires_at = store.signed_url(key, ttl, now=issued + 0.9)
                theirs = botocore_url(plain_env, client, bucket, key, ttl, issued)
                checked += 1
                if ours != theirs:
                    mismatches.append((bucket, key, issued, ttl, ours, theirs))
                assert expires_at == datetime.fromtimestamp(issued + ttl, tz=timezone.utc)
            assert store._client is None  # signed without ever making a boto3 client
    assert not mismatches, f"{len(mismatches)} of {checked} differ, e.g. {mismatches[:2]}"


def test_the_store_prefix_is_part_of_the_signed_key(plain_env):
    set_credentials(plain_env, CREDENTIALS[1])
    settings = S3Settings(None, "eu-west-3")
    store = S3Store(None, "pics", "gw/prod", settings=settings)
    url, _ = store.signed_url("a b.png", 60, now=NOW)
    assert urlsplit(url).path == "/gw/prod/a%20b.png"
    assert url == botocore_url(plain_env, settings.client(), "pics", "gw/prod/a b.png", 60, NOW)


def test_a_session_token_is_signed_into_the_query(plain_env):
    set_credentials(plain_env, CREDENTIALS[1])
    query = dict(parse_qsl(urlsplit(S3Store(None, "pics", settings=S3Settings(None, "us-east-1"))
                                    .signed_url("a.png", 60, now=NOW)[0]).query))
    assert query["X-Amz-Security-Token"] == CREDENTIALS[1]["AWS_SESSION_TOKEN"]
    assert query["X-Amz-Credential"] == "ASIA2EXAMPLE/20270115/us-east-1/s3/aws4_request"


@pytest.mark.parametrize("environ, expected", [
    ({"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}, sigv4.Credentials("AK", "SK")),
    ({"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "T"},
     sigv4.Credentials("AK", "SK", "T")),
    ({"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "T",
      "AWS_SECURITY_TOKEN": "OLD"}, sigv4.Credentials("AK", "SK", "OLD")),  # botocore reads the old name first
    ({"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": ""},
     sigv4.Credentials("AK", "SK")),
    ({"AWS_ACCESS_KEY_ID": "AK"}, None),
    ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "SK"}, None),
    ({}, None),
])
def test_credentials_from_the_environment(environ, expected):
    assert sigv4.credentials_from_env(environ) == expected


def test_credentials_do_not_show_their_secrets():
    shown = repr(sigv4.Credentials("AKID", "the-secret", "the-token"))
    assert "AKID" in shown and "the-secret" not in shown and "the-token" not in shown


# --------------------------------------------------------------------------- when botocore signs

def test_credentials_found_only_by_botocore_sign_with_botocore(plain_env, tmp_path):
    """No keys in the environment (a credentials file here; an instance profile or SSO elsewhere)."""
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIDFROMFILE\naws_secret_access_key = file-secret\n")
    plain_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    store = S3Store(None, "pics", settings=S3Settings(None, "eu-west-3"))
    url, _ = store.signed_url("a.png", 60, now=NOW)
    assert store._client is not None
    assert "X-Amz-Credential=AKIDFROMFILE%2F" in url
    assert url == botocore_url(plain_env, store.client, "pics", "a.png", 60, NOW)


@pytest.mark.parametrize("name, value", [
    ("AWS_USE_FIPS_ENDPOINT", "true"), ("AWS_USE_DUALSTACK_ENDPOINT", "true"),
    ("AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", "regional"), ("AWS_ENDPOINT_URL_S3", "https://s3.example.test"),
    ("AWS_ENDPOINT_URL", "https://all.example.test"), ("AWS_DEFAULTS_MODE", "standard"),
])
def test_settings_botocore_reads_elsewhere_make_botocore_sign(plain_env, name, value):
    set_credentials(plain_env, CREDENTIALS[0])
    plain_env.setenv(name, value)
    assert sigv4.botocore_settings() == name
    store = S3Store(None, "pics", settings=S3Settings(None, "us-east-1"))
    url, _ = store.signed_url("a.png", 60, now=NOW)
    assert store._client is not None
    assert url == botocore_url(plain_env, store.client, "pics", "a.png", 60, NOW)


def test_a_shared_config_file_makes_botocore_sign(plain_env, tmp_path):
    config = tmp_path / "config"
    config.write_text("[default]\ns3 =\n    addressing_style = path\n")
    plain_env.setenv("AWS_CONFIG_FILE", str(config))
    set_credentials(plain_env, CREDENTIALS[0])
    assert sigv4.botocore_settings() == str(config)
    store = S3Store(None, "pics", settings=S3Settings(None, "us-east-1"))
    url, _ = store.signed_url("a.png", 60, now=NOW)
    assert urlsplit(url).path == "/pics/a.png"  # the file's addressing style, which only botocore knows
    assert url == botocore_url(plain_env, store.client, "pics", "a.png", 60, NOW)


@pytest.mark.parametrize("endpoint, region", [
    (None, "us-iso-east-1"), (None, "eusc-de-east-1"), (None, "aws-global"), (None, "EU-WEST-1"),
    ("https://user:pw@s3.example.test", "us-east-1"), ("http://[::1]:9000", "us-east-1"),
    ("https://s3.example.test/a/../b", "us-east-1"), ("https://s3.example.test/a%20b", "us-east-1"),
])
def test_settings_the_presigner_does_not_model_are_signed_by_botocore(plain_env, endpoint, region):
    set_credentials(plain_env, CREDENTIALS[0])
    with pytest.raises(sigv4.Unsupported):
        sigv4.Presigner("pics", region, endpoint)
    store = S3Store(None, "pics", settings=S3Settings(endpoint, region))
    assert store._presigner is None
    url, _ = store.signed_url("a.png", 60, now=NOW)
    assert url == botocore_url(plain_env, store.client, "pics", "a.png", 60, NOW)


# --------------------------------------------------------------------------- real links

@pytest.mark.parametrize("key", ["users/u/jobs/j/9_0.png", "a b/ü 图.png", "x+y~z/(1)=&$@,;:'!*.png"])
def test_s3rver_serves_the_presigned_links(s3rver, key):
    config = Config.from_env({"STORAGE_URL": f"s3://{s3rver.bucket}/sigv4-test", "S3_ENDPOINT_URL": s3rver.endpoint_url,
                              "S3_REGION": s3rver.region, "SECRET_KEY": "x" * 32})
    store = open_store(config)
    assert store._presigner is not None
    store.put_bytes(key, b"preview bytes", "image/jpeg")
    url, _ = store.signed_url(key, 60)
    signed_at = dict(parse_qsl(urlsplit(url).query))["X-Amz-Date"]
    issued = int(datetime.strptime(signed_at, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp())
    assert url == store._presigner.url(store.full_key(key), 60, issued, sigv4.credentials_from_env())
    # s3rver does not check SigV4 signatures (the comparison with botocore does): this shows that the
    # links reach the object, keys encoded as the server decodes them.
    r = requests.get(url, timeout=10)
    assert (r.status_code, r.content) == (200, b"preview bytes")
