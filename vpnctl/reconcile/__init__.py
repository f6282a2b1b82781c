"""Pure desired-state functions and the per-key reconcile loop."""
