"""fileshare identity: Ed25519 keys, PeerIds."""
