"""S/MIME signed mail (RFC 8551, RFC 1847), pure: no I/O.

``signed(outer, inner, signer)`` returns the mail as sent::

    <outer's headers>
    Content-Type: multipart/signed; protocol="application/pkcs7-signature";
     micalg=sha-256; boundary=...

    --boundary
    <the inner MIME entity, exact CRLF bytes: what is signed>
    --boundary
    Content-Type: application/pkcs7-signature; name=smime.p7s
    Content-Transfer-Encoding: base64

    <detached CMS SignedData over those bytes, from the gateway's certificate>
    --boundary--

Canonical form: the inner entity is serialised once with CRLF line ends, every part of it
7-bit (text quoted-printable, the rest base64: no trailing white space, no long lines, no
8-bit byte for a server to touch), and those very bytes are signed in binary mode.  The
outer headers are not signed (as in any S/MIME mail); the inner entity repeats none of
them.
"""

from __future__ import annotations

import base64
import email.policy
import secrets
from email.message import EmailMessage, MIMEPart

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.signingcert import Signer

# CRLF, and header lines up to RFC 5322's hard limit
POLICY = email.policy.SMTP.clone(max_line_length=998)
SIGNATURE_MEDIA = "application/pkcs7-signature"


class NotSevenBit(ValueError):
    """The inner entity holds a byte or a line a mail server might change."""


def canonical(inner: MIMEPart) -> bytes:
    """The inner entity's exact bytes (CRLF), checked to survive any transport unchanged."""
    data = inner.as_bytes(policy=POLICY)
    if any(b > 126 for b in data):
        raise NotSevenBit("an 8-bit byte in the signed part (encode it quoted-printable or "
                          "base64)")
    for line in data.split(b"\r\n"):
        if len(line) > 998 or line[-1:] in (b" ", b"\t") or b"\n" in line or b"\r" in line:
            raise NotSevenBit("a line of the signed part is too long, ends in white space "
                              "or holds a bare CR or LF")
    return data


def signature(data: bytes, signer: Signer) -> bytes:
    """A detached CMS SignedData (DER) over ``data``, as is (binary: no conversion)."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(
        signer.cert, signer.key, hashes.SHA256())
    for extra in signer.chain:
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                                     pkcs7.PKCS7Options.Binary])


def _base64_lines(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def signed(outer: EmailMessage, inner: MIMEPart, signer: Signer) -> bytes:
    """``outer``'s headers (it has no body) around ``inner``, signed by ``signer``."""
    content = canonical(inner)
    boundary = "=_tcms_signed_" + secrets.token_hex(12)
    while boundary.encode() in content:  # never, with 96 random bits: still, be sure
        boundary = "=_tcms_signed_" + secrets.token_hex(12)
    for name in ("Content-Type", "Content-Transfer-Encoding", "MIME-Version"):
        del outer[name]
    outer["MIME-Version"] = "1.0"
    outer["Content-Type"] = (f'multipart/signed; protocol="{SIGNATURE_MEDIA}"; '
                             f'micalg=sha-256; boundary="{boundary}"')
    head = b"".join(POLICY.fold_binary(k, v) for k, v in outer.items())
    b = boundary.encode()
    return b"".join([
        head, b"\r\n",
        b"This is an S/MIME signed message.\r\n\r\n",
        b"--" + b + b"\r\n", content, b"\r\n",
        b"--" + b + b"\r\n",
        f'Content-Type: {SIGNATURE_MEDIA}; name="smime.p7s"\r\n'.encode(),
        b"Content-Transfer-Encoding: base64\r\n",
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n',
        b"Content-Description: S/MIME signature of the gateway\r\n\r\n",
        _base64_lines(signature(content, signer)), b"\r\n",
        b"--" + b + b"--\r\n"])
