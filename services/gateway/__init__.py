"""The gateway: public gRPC API, tokenizer, detokenization, validation."""
