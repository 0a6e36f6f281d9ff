"""The scheduler: request state, policies, KV-block accounting, the iteration loop."""
