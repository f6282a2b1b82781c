"""Shared test support, used by several test folders and by bench/: bounded waits
(``polling``), CAPI objects (``capi``), kubeconfig samples and the key-material scanner."""
