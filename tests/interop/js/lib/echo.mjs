// "/fileshare/echo/1.0.0": the responder echoes every byte back until EOF, then closes its write side.
import { createHash } from 'node:crypto'
import { payloadChunk } from './payload.mjs'

export const ECHO_PROTOCOL = '/fileshare/echo/1.0.0'
const CHUNK = 64 * 1024

function bytesOf (chunk) {
  return chunk instanceof Uint8Array ? chunk : chunk.subarray()
}

async function sendAll (stream, buf, signal) {
  if (!stream.send(buf)) await stream.onDrain({ signal })
}

/** Record of every served echo stream, reported by the `served` command. */
export const served = []

export async function echoHandler (stream, connection) {
  const hash = createHash('sha256')
  const record = { peer_id: connection.remotePeer.toString(), protocol: stream.protocol, bytes: 0, sha256: null, ok: false }
  served.push(record)
  try {
    for await (const chunk of stream) {
      const b = bytesOf(chunk)
      hash.update(b)
      record.bytes += b.length
      await sendAll(stream, b)
    }
    // Complete once everything is echoed: the client may ask "served" as soon as it sees our
    // FIN, possibly before close() resolves here.
    record.sha256 = hash.digest('hex')
    record.ok = true
    await stream.close()
  } catch (err) {
    record.ok = false
    record.error = `${err.name}: ${err.message}`
    stream.abort(err)
  }
}

/** Opens the echo protocol, sends `size` payload bytes, half-closes, reads everything back. */
export async function echoClient (node, target, size, { signal, protocol = ECHO_PROTOCOL } = {}) {
  const stream = await node.dialProtocol(target, protocol, { signal })
  const received = createHash('sha256')
  const sent = createHash('sha256')
  let bytes = 0
  const started = performance.now()
  const reader = (async () => {
    for await (const chunk of stream) {
      const b = bytesOf(chunk)
      received.update(b)
      bytes += b.length
    }
  })()
  reader.catch(() => {})
  const onAbort = () => stream.abort(signal.reason ?? new Error('aborted'))
  signal?.addEventListener('abort', onAbort, { once: true })
  try {
    for (let off = 0; off < size; off += CHUNK) {
      const buf = payloadChunk(off, Math.min(CHUNK, size - off))
      sent.update(buf)
      await sendAll(stream, buf, signal)
    }
    await stream.close({ signal })
    await reader
  } catch (err) {
    stream.abort(err)
    throw err
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
  const seconds = (performance.now() - started) / 1000
  return {
    sha256: received.digest('hex'),
    sent_sha256: sent.digest('hex'),
    bytes,
    seconds,
    protocol: stream.protocol
  }
}
