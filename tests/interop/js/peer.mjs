// js-libp2p interop test peer (Node 20). Contract shared with tests/interop/py_peer.py:
//
//   node peer.mjs --listen /ip4/127.0.0.1/tcp/0 [--dial MULTIADDR]... [--services identify,ping,echo]
//
// Prints ONE JSON line {"peer_id", "addrs", "protocols", "impl"} once listening (and after
// any --dial succeeded), then reads JSON commands from stdin, one per line, and answers each with
// one JSON line: {"ok": true, ...} or {"ok": false, "error": "..."}. A command may carry "id"
// (echoed back) and "timeout_ms" (default 25000). EOF on stdin or {"cmd":"quit"} stops the peer.
//
// Commands: core (info, connect, disconnect, peers, quit) plus those of each enabled service
// (lib/services.mjs). New protocols are added there as new services/commands.
import './lib/shim.mjs'
import { createInterface } from 'node:readline'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { SERVICES, DEFAULT_SERVICES } from './lib/services.mjs'

const DEFAULT_TIMEOUT_MS = 25000

function parseArgs (argv) {
  const opts = { listen: [], dial: [], services: DEFAULT_SERVICES }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    const value = argv[i + 1]
    if (value === undefined) throw new Error(`missing value for ${flag}`)
    if (flag === '--listen') opts.listen.push(value)
    else if (flag === '--dial') opts.dial.push(value)
    else if (flag === '--services') opts.services = value.split(',').map(s => s.trim()).filter(Boolean)
    else throw new Error(`unknown argument ${flag}`)
    i++
  }
  if (opts.listen.length === 0) opts.listen.push('/ip4/127.0.0.1/tcp/0')
  for (const name of opts.services) {
    if (SERVICES[name] === undefined) throw new Error(`unknown service ${name}; known: ${Object.keys(SERVICES).join(',')}`)
  }
  return opts
}

function errorText (err) {
  return `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}`
}

function write (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

async function main () {
  const opts = parseArgs(process.argv.slice(2))
  const enabled = opts.services.map(name => [name, SERVICES[name]])

  const services = {}
  for (const [, svc] of enabled) Object.assign(services, svc.libp2pServices?.() ?? {})

  const node = await createLibp2p({
    addresses: { listen: opts.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    services
  })
  const ctx = { node, multiaddr }
  for (const [, svc] of enabled) await svc.setup?.(ctx)

  const commands = {
    info: async () => info(node),
    connect: async (c, signal) => {
      const conn = await node.dial(multiaddr(c.addr), { signal })
      return { peer_id: conn.remotePeer.toString(), remote_addr: conn.remoteAddr.toString(), direction: conn.direction }
    },
    disconnect: async (c, signal) => {
      const target = c.peer_id !== undefined ? node.getPeers().find(p => p.toString() === c.peer_id) : multiaddr(c.addr)
      if (target !== undefined) await node.hangUp(target, { signal })
      return {}
    },
    peers: async () => ({
      peers: node.getConnections().map(conn => ({
        peer_id: conn.remotePeer.toString(),
        remote_addr: conn.remoteAddr.toString(),
        direction: conn.direction,
        status: conn.status,
        streams: conn.streams.map(s => s.protocol)
      }))
    })
  }
  for (const [, svc] of enabled) Object.assign(commands, svc.commands ?? {})

  for (const addr of opts.dial) await node.dial(multiaddr(addr), { signal: AbortSignal.timeout(DEFAULT_TIMEOUT_MS) })
  write(info(node))

  let stopping = false
  const stop = async (code) => {
    if (stopping) return
    stopping = true
    try { await node.stop() } catch (err) { process.stderr.write(`stop failed: ${errorText(err)}\n`) }
    process.exit(code)
  }
  process.on('SIGTERM', () => { stop(0) })
  process.on('SIGINT', () => { stop(0) })

  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of rl) {
    if (line.trim() === '') continue
    let cmd
    try {
      cmd = JSON.parse(line)
    } catch (err) {
      write({ ok: false, error: `bad JSON: ${errorText(err)}` })
      continue
    }
    const reply = cmd.id !== undefined ? { id: cmd.id } : {}
    if (cmd.cmd === 'quit') {
      write({ ...reply, ok: true })
      await stop(0)
      return
    }
    const fn = commands[cmd.cmd]
    if (fn === undefined) {
      write({ ...reply, ok: false, error: `unknown command ${JSON.stringify(cmd.cmd)}; known: ${['quit', ...Object.keys(commands)].join(',')}` })
      continue
    }
    const signal = AbortSignal.timeout(cmd.timeout_ms ?? DEFAULT_TIMEOUT_MS)
    try {
      write({ ...reply, ok: true, ...(await fn(cmd, signal, ctx)) })
    } catch (err) {
      process.stderr.write(`command ${cmd.cmd} failed: ${err?.stack ?? errorText(err)}\n`)
      write({ ...reply, ok: false, error: errorText(err) })
    }
  }
  await stop(0) // stdin closed: the test process is gone
}

function info (node) {
  return {
    peer_id: node.peerId.toString(),
    addrs: node.getMultiaddrs().map(a => a.toString()),
    protocols: node.getProtocols(),
    impl: 'js-libp2p'
  }
}

main().catch(err => {
  process.stderr.write(`peer.mjs: fatal: ${err?.stack ?? errorText(err)}\n`)
  process.exit(1)
})
