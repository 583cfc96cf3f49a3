"""fileshare: a peer-to-peer file-sharing node speaking libp2p and IPFS wire protocols."""

__version__ = "0.1.0"
