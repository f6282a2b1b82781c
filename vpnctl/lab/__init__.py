"""The local miniature of the whole system, built from real processes in namespaces."""
