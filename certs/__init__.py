"""The per-tenant PKI on `cryptography`: no I/O, and the clock is passed in."""
