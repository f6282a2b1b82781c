"""The vpnctl controller: from CAPI objects to a working, self-healing tunnel per tenant.

- ``interfaces``: the TenantSide and ObservationSource seams (Protocols).
- ``queue``: the per-key work queue (one key at a time, keys in parallel, backoff).
- ``tenant``: ``reconcile_tenant``, the service-cluster side of one tenant, on the
  ``TenantApi`` Protocol (``tenant_api``); its parts are ``tenant_lifecycle``,
  ``tenant_pki``, ``tenant_revocations``, ``tenant_server`` and ``tenant_status``.
- ``operator``: watches, leader election, resync, /healthz (``Controller``).
- ``observe``: the real ObservationSource (the server role's status endpoint).
- ``metrics``: the controller's Prometheus metrics on a passed-in registry.
- ``tenant_side``: the tenant-cluster side; its jobs in ``tenant_install``,
  ``tenant_repair``, ``tenant_csr_loop`` and ``tenant_cleanup``, supervised by ``tenant_tasks``.
"""
