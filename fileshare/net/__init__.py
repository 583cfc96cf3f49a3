"""Networking: multiaddrs, TCP, multistream-select, Noise, yamux, the host."""
