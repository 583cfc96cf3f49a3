// Import files with the reference JS UnixFS importer and print the CIDs it produces.
//
// Usage: node importer_cids.mjs cases.json
// cases.json: [{ "name", "path", "chunkSize", "maxChildrenPerNode", "cidVersion", "rawLeaves",
//                "reduceSingleLeafToSelf" (optional) } or { "name", "path", "profile" }, ...]
// Prints: { "<name>": { "root": "<cid>", "blocks": ["<cid>", ...] }, ... }  (blocks in put order)

import './lib/shim.mjs'
import { createReadStream } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

// A blockstore that only records what is written to it.
class RecordingBlockstore {
  constructor () { this.cids = [] }
  async put (cid, bytes) { this.cids.push(cid.toString()); return cid }
  async has () { return false }
}

async function importCase (c) {
  const store = new RecordingBlockstore()
  // With "profile", the importer's own IPIP-499 profile settings are used and nothing else.
  const options = c.profile != null
    ? { profile: c.profile }
    : {
        cidVersion: c.cidVersion,
        rawLeaves: c.rawLeaves,
        reduceSingleLeafToSelf: c.reduceSingleLeafToSelf ?? true,
        chunker: fixedSize({ chunkSize: c.chunkSize }),
        layout: balanced({ maxChildrenPerNode: c.maxChildrenPerNode })
      }
  let root
  for await (const entry of importer([{ content: createReadStream(c.path, { highWaterMark: 65536 }) }], store, options)) {
    root = entry.cid.toString()
  }
  return { root, blocks: store.cids }
}

const cases = JSON.parse(await readFile(process.argv[2], 'utf8'))
const out = {}
for (const c of cases) {
  out[c.name] = await importCase(c)
}
process.stdout.write(JSON.stringify(out) + '\n')
