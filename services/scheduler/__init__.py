"""The scheduler: request state, policies, KV-block accounting, the replicas' iterations."""
