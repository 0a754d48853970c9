"""The outbound TLS policy of every AWS connection: TLS 1.2 and 1.3 only, and only the published suites.

TLS 1.3: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256 (OpenSSL's own TLS 1.3
list; Python cannot set it, so it is checked at start instead). TLS 1.2: ECDHE with ECDSA or RSA, AES-GCM 128
or 256. Certificates are verified as botocore verifies them (its CA bundle, ``AWS_CA_BUNDLE``); plain HTTP
is refused except to a loopback endpoint (moto, a local test). ``tls_policy = "relaxed"`` keeps botocore's
defaults, for a TLS-inspecting corporate proxy, and says so loudly at start.
"""

from __future__ import annotations

import ipaddress
import ssl
from urllib.parse import urlsplit

from aiobotocore.httpsession import AIOHTTPSession
from botocore.httpsession import create_urllib3_context

from reconciler.errors import ConfigError

TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})
TLS12_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)


def policy_context() -> ssl.SSLContext:
    """botocore's client context, narrowed to the policy; ConfigError if this OpenSSL cannot keep it."""
    context: ssl.SSLContext = create_urllib3_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(":".join(TLS12_SUITES))
    offered = {cipher["name"] for cipher in context.get_ciphers()}
    if offered != TLS13_SUITES | set(TLS12_SUITES):
        extra = ", ".join(sorted(offered - TLS13_SUITES - set(TLS12_SUITES))) or "none"
        missing = ", ".join(sorted((TLS13_SUITES | set(TLS12_SUITES)) - offered)) or "none"
        raise ConfigError(
            f"this OpenSSL cannot keep the TLS policy (extra suites: {extra}; missing: {missing});"
            " set RECONCILER_TLS_POLICY=relaxed to use its defaults"
        )
    return context


class PolicySession(AIOHTTPSession):
    """aiobotocore's HTTP session with the policy's context (verification is added to it as usual)."""

    def _get_ssl_context(self) -> ssl.SSLContext:
        return policy_context()


def check_endpoint(url: str | None) -> None:
    """Plain HTTP only to a loopback endpoint: anything else would send signed requests in the clear."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _loopback(parts.hostname or ""):
        return
    raise ConfigError(f"endpoint {parts.scheme}://{parts.hostname}: plain HTTP is allowed only to loopback")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
