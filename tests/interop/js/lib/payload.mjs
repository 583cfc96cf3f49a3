// Deterministic test payload shared with tests/interop/conftest.py:
// byte stream = little-endian uint32 word counter 0, 1, 2, ... truncated to the requested size.
// Every 4-byte position is unique (up to 16 GiB), so reordered or duplicated frames change the hash.

/** Bytes [offset, offset + length) of the payload; offset must be a multiple of 4. */
export function payloadChunk (offset, length) {
  if (offset % 4 !== 0) throw new Error('payload offset must be a multiple of 4')
  const words = Math.ceil(length / 4)
  const buf = new Uint8Array(words * 4)
  const view = new DataView(buf.buffer)
  const first = offset / 4
  for (let i = 0; i < words; i++) view.setUint32(i * 4, (first + i) >>> 0, true)
  return buf.subarray(0, length)
}
