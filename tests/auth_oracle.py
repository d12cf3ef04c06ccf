"""The official SDK as the reference for request signing (test-only).

``sdk_sign`` builds a ``huaweicloudsdkcore`` ``SdkRequest`` from plain inputs and signs it the
way the SDK's ``BasicCredentials`` does (security token added before signing). The date is
pinned by passing ``X-Sdk-Date`` in, which the SDK's ``Signer`` honours instead of its clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest


@dataclass(frozen=True)
class SdkSigned:
    """What the SDK would put on the wire, with header values decoded back from its latin-1 form."""

    method: str
    raw_path: str
    raw_query: str
    headers: dict[str, str]
    body: bytes


def sdk_sign(
    *,
    method: str,
    host: str,
    path: str,
    query: list[tuple[str, Any]],
    headers: dict[str, str],
    body: bytes,
    ak: str,
    sk: str,
    security_token: str | None,
    sdk_date: str,
) -> SdkSigned:
    credentials = BasicCredentials(ak, sk)
    if security_token is not None:
        credentials.with_security_token(security_token)
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=path,
        query_params=list(query),
        header_params={**headers, "X-Sdk-Date": sdk_date},
        body=body,
    )
    signed = credentials.sign_request(request)
    raw_path, _, raw_query = signed.uri.partition("?")
    wire_headers = {
        name: value.encode("iso-8859-1").decode("utf-8") if isinstance(value, str) else str(value)
        for name, value in signed.header_params.items()
    }
    return SdkSigned(method, raw_path, raw_query, wire_headers, body)
