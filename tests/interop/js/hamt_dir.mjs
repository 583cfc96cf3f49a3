// Reference for sharded (HAMT) directories: the JS UnixFS importer builds a directory of the given
// files, sharding it once its estimated size passes `threshold` bytes; murmur3-x64-64 of strings.
//
// Usage: node hamt_dir.mjs input.json
// input.json: { "threshold": <bytes>, "files": [[name, utf8 content], ...], "hash": ["text", ...] }
// Prints: { "root": "<cid of the directory>", "files": { name: cid }, "blocks": { cid: base64 },
//           "murmur": { text: hex } }

import './lib/shim.mjs'
import { readFile } from 'node:fs/promises'
import { importer } from 'ipfs-unixfs-importer'
import { murmur364 } from '@multiformats/murmur3'

class MemoryBlockstore {
  constructor () { this.blocks = new Map() }
  async put (cid, bytes) { this.blocks.set(cid.toString(), Buffer.from(bytes).toString('base64')); return cid }
  async get (cid) { return Buffer.from(this.blocks.get(cid.toString()), 'base64') }
  async has (cid) { return this.blocks.has(cid.toString()) }
}

const input = JSON.parse(await readFile(process.argv[2], 'utf8'))
const store = new MemoryBlockstore()
const source = input.files.map(([name, text]) => ({ path: `d/${name}`, content: new TextEncoder().encode(text) }))
const files = {}
let root
for await (const entry of importer(source, store, {
  cidVersion: 1, rawLeaves: true, shardSplitThresholdBytes: input.threshold
})) {
  if (entry.path === 'd') root = entry.cid.toString()
  else files[entry.path.slice(2)] = entry.cid.toString()
}
const murmur = {}
for (const text of input.hash ?? []) {
  murmur[text] = Buffer.from(await murmur364.encode(new TextEncoder().encode(text))).toString('hex')
}
process.stdout.write(JSON.stringify({ root, files, blocks: Object.fromEntries(store.blocks), murmur }) + '\n')
