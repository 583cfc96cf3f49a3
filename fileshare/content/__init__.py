"""Content addressing: CIDs, multihashes, dag-pb/UnixFS codecs, chunking, DAG building, blocks."""
