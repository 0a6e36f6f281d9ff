"""The worker: model, paged KV cache, one forward pass per step plan, sampling."""
