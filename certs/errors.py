"""Errors of the PKI, one class per thing a person can do something about.

Every message says what is wrong, which material it is about (by CN and serial,
never by content) and what to do. Key material never appears in a message: the
callers log these strings and put them in Kubernetes Events and conditions.
"""

from __future__ import annotations


class PKIError(ValueError):
    """Base of every error raised by `certs`."""


class MalformedMaterial(PKIError):
    """The bytes are not PEM, or not the kind of object expected (cert, key, CSR, CRL)."""


class InvalidName(PKIError):
    """A common name, DNS name or organization that we refuse to put in a certificate."""


class KeyMismatch(PKIError):
    """A private key that does not belong to the certificate (or tls-crypt-v2 server key)."""


class ChainError(PKIError):
    """The certificate or CRL was not signed by the CA it was checked against."""


class Expired(PKIError):
    """The certificate's notAfter is in the past."""


class NotYetValid(PKIError):
    """The certificate's notBefore is in the future."""


class WrongUsage(PKIError):
    """The certificate is valid but not for this purpose (e.g. a client cert used as server)."""
