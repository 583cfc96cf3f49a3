"""Wire-level building blocks shared by every protocol: varints and protobuf fields."""
