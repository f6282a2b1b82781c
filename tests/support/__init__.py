"""Shared test support, used by several test folders and by bench/: bounded waits
(``polling``), CAPI objects (``capi``), fakes of our own interfaces (``fake_tenant_side``,
``fake_tenant_api``), kubeconfig samples and the key-material scanner."""
