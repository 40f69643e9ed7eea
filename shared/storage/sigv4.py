"""SigV4 presigned GET URLs for S3 with hmac and hashlib alone: no botocore.

A status poll signs the link of a live preview on every answer; through boto3
that costs a cold Lambda ~85 ms of imports and a client. ``Presigner.url``
returns exactly what botocore's ``generate_presigned_url("get_object", ...)``
returns for a client made by ``make_s3_client`` with the same endpoint, region
and addressing style, credentials and signing time (tests/shared/test_sigv4.py
compares the two across endpoints, regions, styles, buckets, keys and session
tokens; botocore as pinned in constraints.txt).

It models what the gateway configures (S3_ENDPOINT_URL, S3_REGION,
S3_ADDRESSING_STYLE) on AWS's commercial, China and GovCloud partitions or any
S3 API, with credentials in the environment. Whatever else would change
botocore's URL is not modelled, and the caller signs with botocore then:
``Presigner`` refuses settings outside that (``Unsupported``), and
``botocore_settings`` names what botocore would read from the environment or a
shared config file (FIPS or dual-stack endpoints, AWS_ENDPOINT_URL, ...).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

# botocore's own patterns (endpoint_provider.VALID_HOST_LABEL_RE, compat.IPV4_RE, utils.validate_region_name).
_HOST_LABEL = re.compile(r"^(?!-)[a-zA-Z\d-]{1,63}(?<!-)$")
_IPV4 = re.compile(r"^(?:[0-9]{1,3}\.){3}[0-9]{1,3}$")
_REGION = re.compile(r"^(?![0-9]+$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Partitions by region (botocore/data/partitions.json); a region matching none is in "aws".
_PARTITIONS = (("aws-cn", re.compile(r"^cn\-\w+\-\d+$"), "amazonaws.com.cn"),
               ("aws-us-gov", re.compile(r"^us\-gov\-\w+\-\d+$"), "amazonaws.com"))
_OTHER_PARTITIONS = re.compile(r"^(?:aws-|eusc-|us-iso|eu-isoe-)")  # iso, European sovereign cloud, *-global
_ENDPOINT_PATH = re.compile(r"^(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Environment variables with which botocore would presign differently from what is modelled here.
_BOTOCORE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT",
                 "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", "AWS_DEFAULTS_MODE", "AWS_DATA_PATH")


class Unsupported(ValueError):
    """Settings this presigner does not model: botocore must sign."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key!r}, secret_key='***', token={'***' if self.token else None})"


def credentials_from_env(environ=None) -> Credentials | None:
    """The credentials botocore's chain takes first: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, with
    AWS_SECURITY_TOKEN or AWS_SESSION_TOKEN (what Lambda sets for the function's role).

    None when they are not both there: the credentials are elsewhere (a credentials file, an
    instance profile, SSO...) and only botocore's chain finds them.
    """
    environ = os.environ if environ is None else environ
    access_key, secret_key = environ.get("AWS_ACCESS_KEY_ID", ""), environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not access_key or not secret_key:
        return None
    token = environ.get("AWS_SECURITY_TOKEN") or environ.get("AWS_SESSION_TOKEN") or None
    return Credentials(access_key, secret_key, token)


def botocore_settings(environ=None) -> str | None:
    """What botocore would read besides our settings that could change a URL (None if nothing).

    An environment variable of ``_BOTOCORE_ENV``, or a shared config file (AWS_CONFIG_FILE,
    default ~/.aws/config), whose profile may set an endpoint, FIPS, dual-stack, an addressing
    style... Lambda has neither.
    """
    environ = os.environ if environ is None else environ
    for name in _BOTOCORE_ENV:
        if environ.get(name):
            return name
    config_file = os.path.expanduser(environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    return config_file if os.path.exists(config_file) else None


def _virtual_hostable(bucket: str, *, dots: bool) -> bool:
    """botocore's aws.isVirtualHostableS3Bucket: lowercase host label(s), 3+ characters, not an IP."""
    if len(bucket) < 3 or bucket.lower() != bucket or _IPV4.match(bucket):
        return False
    return all(_HOST_LABEL.match(label) for label in (bucket.split(".") if dots else [bucket]))


class Presigner:
    """Presigned GET URLs of the objects of one bucket, as botocore makes them.

    ``endpoint_url`` None means AWS itself; ``addressing_style`` is S3_ADDRESSING_STYLE ("auto"
    addresses a custom endpoint path-style, as ``make_s3_client`` does). Raises ``Unsupported``
    for settings botocore would treat in ways not modelled here.
    """

    def __init__(self, bucket: str, region: str, endpoint_url: str | None = None, addressing_style: str = "auto"):
        if not bucket:
            raise Unsupported("no bucket")
        if addressing_style not in ("auto", "path", "virtual"):
            raise Unsupported(f"addressing style {addressing_style!r}")
        if not _REGION.match(region or "") or _OTHER_PARTITIONS.match(region):
            raise Unsupported(f"region {region!r}")
        self.region = region
        if endpoint_url:
            self._scheme, self._netloc, self._prefix = self._custom(endpoint_url, bucket, addressing_style)
        else:
            self._scheme, self._netloc, self._prefix = self._aws(region, bucket, addressing_style)
        parts = urlsplit(f"{self._scheme}://{self._netloc}/")
        host = parts.hostname or ""
        if parts.port is not None and parts.port != _DEFAULT_PORTS[self._scheme]:
            host += f":{parts.port}"
        self._host = host  # the signed Host header: lowercase, without a default port

    def __repr__(self) -> str:
        return f"Presigner({self._scheme}://{self._netloc}{self._prefix}, region={self.region!r})"

    @staticmethod
    def _custom(endpoint_url: str, bucket: str, style: str) -> tuple[str, str, str]:
        """An S3 API at ``endpoint_url``: path-style (``auto`` and ``path``), or virtual where botocore allows."""
        parts = urlsplit(endpoint_url)
        scheme = parts.scheme.lower()
        try:
            parts.port
        except ValueError:
            raise Unsupported("endpoint port") from None
        if (scheme not in _DEFAULT_PORTS or not parts.hostname or parts.query or parts.fragment
                or "@" in parts.netloc or "[" in parts.netloc or not _ENDPOINT_PATH.match(parts.path)
                or any(segment in (".", "..") for segment in parts.path.split("/"))):
            raise Unsupported("endpoint URL")
        path = parts.path.rstrip("/")
        if style == "virtual":
            # botocore's rules: a one-label name goes before the host unless that is an IP address;
            # a dotted one does (IP or not) only over plain http, where no certificate has to match.
            if (not _IPV4.match(parts.hostname) if _virtual_hostable(bucket, dots=False)
                    else scheme == "http" and _virtual_hostable(bucket, dots=True)):
                return scheme, f"{bucket}.{parts.netloc}", path
        return scheme, parts.netloc, f"{path}/{quote(bucket, safe='-_.~')}"

    @staticmethod
    def _aws(region: str, bucket: str, style: str) -> tuple[str, str, str]:
        """AWS: with "auto", botocore presigns on the global endpoint (s3.amazonaws.com) of the aws
        partition unless the bucket is no host label; otherwise on the region's endpoint."""
        partition, suffix = next(((name, dns) for name, pattern, dns in _PARTITIONS if pattern.match(region)),
                                 ("aws", "amazonaws.com"))
        if style == "auto" and partition == "aws" and _HOST_LABEL.match(bucket):
            host = "s3.amazonaws.com"
        else:
            host = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.{suffix}"
        if style != "path" and _virtual_hostable(bucket, dots=False):
            return "https", f"{bucket}.{host}", ""
        return "https", host, f"/{quote(bucket, safe='-_.~')}"

    def url(self, key: str, expires: int, issued: int, credentials: Credentials) -> str:
        """A GET URL of ``key`` (the full S3 key) valid ``expires`` seconds from ``issued`` (epoch seconds)."""
        path = f"{self._prefix}/{quote(key, safe='/~')}"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(issued))
        scope = f"{stamp[:8]}/{self.region}/s3/aws4_request"
        params = [("X-Amz-Algorithm", ALGORITHM), ("X-Amz-Credential", f"{credentials.access_key}/{scope}"),
                  ("X-Amz-Date", stamp), ("X-Amz-Expires", str(expires)), ("X-Amz-SignedHeaders", "host")]
        if credentials.token is not None:
            params.append(("X-Amz-Security-Token", credentials.token))
        encoded = [(name, quote(value, safe="-_.~")) for name, value in params]
        query = "&".join(f"{name}={value}" for name, value in encoded)
        canonical_request = "\n".join(["GET", path, "&".join(f"{n}={v}" for n, v in sorted(encoded)),
                                       f"host:{self._host}\n", "host", UNSIGNED_PAYLOAD])
        string_to_sign = "\n".join([ALGORITHM, stamp, scope,
                                    hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()])
        signing_key = ("AWS4" + credentials.secret_key).encode("utf-8")
        for part in (stamp[:8], self.region, "s3", "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode("utf-8"), hashlib.sha256).digest()
        signature = hmac.new(signing_key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{self._scheme}://{self._netloc}{path}?{query}&X-Amz-Signature={signature}"
