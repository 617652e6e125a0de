"""The webhook deliverer (`ldm-serve webhooks`): signed, retried POSTs of the outbox's events."""
