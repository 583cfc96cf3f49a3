"""libp2p/IPFS protocols running on host streams: identify, ping, kad, bitswap, pubsub."""
