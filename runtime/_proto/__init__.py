"""Generated protobuf and gRPC code (see README.md). Do not edit."""
