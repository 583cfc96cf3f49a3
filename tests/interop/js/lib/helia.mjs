// "helia" service for peer.mjs: a Helia node (its own libp2p instance, its own PeerId) beside the
// test peer's libp2p node. Configuration from shared/interop/JS-PEER-NOTES.md: createHeliaLight +
// withLibp2pLight (tcp, noise, yamux, identify, ping, no discovery) + withBitswap, with a blake3
// hasher (hash-wasm) so it can verify our default CIDs. Blocks live in memory.
//
// Commands:
//   {"cmd":"helia_info"} -> {"peer_id","addrs"}
//   {"cmd":"helia_dial","addr":MA} -> {"peer_id"}
//   {"cmd":"helia_add","size":N[,"chunk":BYTES]} -> {"cid","seconds"}  (the shared test payload,
//        @helia/unixfs defaults: CIDv1, raw leaves, sha2-256, 1 MiB chunks)
//   {"cmd":"helia_cat","cid":CID[,"addr":MA][,"path":P]} -> {"sha256","bytes","seconds"}
//        (dials addr first; path: below the CID, through plain and sharded directories)
//   {"cmd":"helia_ls","cid":CID[,"addr":MA][,"path":P]} -> {"names":[...]}
import { createHash } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import { unixfs } from '@helia/unixfs'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createBLAKE3 } from 'hash-wasm'
import { createHeliaLight } from 'helia'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { CID } from 'multiformats/cid'
import { from } from 'multiformats/hashes/hasher'
import { payloadChunk } from './payload.mjs'

const PIECE = 1024 * 1024

async function blake3Hasher () {
  const b3 = await createBLAKE3(256)
  return from({
    name: 'blake3',
    code: 0x1e,
    encode: (data) => { b3.init(); b3.update(data); return b3.digest('binary') }
  })
}

let helia = null
let fs = null

async function start (listen) {
  helia = withBitswap(withLibp2pLight(createHeliaLight({ hashers: [await blake3Hasher()] }), {
    addresses: { listen: [listen] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    services: { identify: identify(), ping: ping() }
  }))
  await helia.start()
  fs = unixfs(helia)
}

async function * payload (size) {
  for (let off = 0; off < size; off += PIECE) yield payloadChunk(off, Math.min(PIECE, size - off))
}

export const heliaService = {
  setup: async () => { await start('/ip4/127.0.0.1/tcp/0') },
  commands: {
    helia_info: async () => ({
      peer_id: helia.libp2p.peerId.toString(),
      addrs: helia.libp2p.getMultiaddrs().map(a => a.toString())
    }),
    helia_dial: async (c, signal) => {
      const conn = await helia.libp2p.dial(multiaddr(c.addr), { signal })
      return { peer_id: conn.remotePeer.toString() }
    },
    helia_add: async (c, signal) => {
      const started = performance.now()
      const options = { signal }
      if (c.chunk !== undefined) options.chunker = fixedSize({ chunkSize: c.chunk })
      const cid = await fs.addByteStream(payload(c.size ?? 0), options)
      return { cid: cid.toString(), seconds: (performance.now() - started) / 1000 }
    },
    helia_cat: async (c, signal) => {
      if (c.addr !== undefined) await helia.libp2p.dial(multiaddr(c.addr), { signal })
      const started = performance.now()
      const hash = createHash('sha256')
      let bytes = 0
      for await (const buf of fs.cat(CID.parse(c.cid), { signal, path: c.path })) {
        hash.update(buf)
        bytes += buf.length
      }
      return { sha256: hash.digest('hex'), bytes, seconds: (performance.now() - started) / 1000 }
    },
    helia_ls: async (c, signal) => {
      if (c.addr !== undefined) await helia.libp2p.dial(multiaddr(c.addr), { signal })
      const names = []
      for await (const entry of fs.ls(CID.parse(c.cid), { signal, path: c.path })) {
        names.push(entry.name)
      }
      return { names }
    },
    helia_stop: async () => { await helia?.stop(); return {} }
  }
}
