"""Code shared by the three services: plain data types, model files, gRPC plumbing."""
