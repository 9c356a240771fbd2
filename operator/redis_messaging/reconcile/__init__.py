"""One idempotent reconcile pass and the periodic safety net."""
