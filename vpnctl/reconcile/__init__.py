"""Pure desired-state functions for one tenant, and (later) the per-key reconcile loop.

Everything here is pure: plain dicts in (what the kube layer read), typed values and
plain dicts out (what it should apply). No Kubernetes client, no clock, no I/O.

- `tenant`: parse and validate Tunnel, Cluster, Machines, Nodes into a `TenantSpec`.
- `allocation`: stable tunnel addresses, kept in the Tunnel's status.
- `routes`: per-client iroutes and pushed routes; the service-CIDR election.
- `plan`: all of the above for one tenant in one call (`plan_tenant`).
- `agentdocs`: the JSON documents the agent roles read (desired state, role configs).
- `objects`, `tenant_objects`: desired Kubernetes objects on both sides.
- `kubeconfig`: a tenant's kubeconfig parsed as data (no exec, no plugins, no file paths).
- `secrets`: reading back CAPI's kubeconfig Secret and our PKI Secrets.
- `diff`: whether an object needs writing (`needs_update`).
- `conditions`, `status`, `table`: status conditions, the status body, `vpnctl status`.
- `errors`: TemporaryError / PermanentError, each with a condition reason.
- `samples`: raw example objects (the lab's tenant) for tests and the lab.
"""
