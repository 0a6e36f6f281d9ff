"""Generated protobuf/gRPC modules of the `sarathi.v1` contracts.

Never edit the `*_pb2*.py` files by hand: `make protos` regenerates them from
`protos/sarathi/v1/`, and a test fails when they are stale.
"""
