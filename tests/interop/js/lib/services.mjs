// Services the test peer can enable with --services. Each entry may provide:
//   libp2pServices(): object merged into createLibp2p({ services })
//   setup(ctx): called after the node is created (ctx = { node, multiaddr })
//   commands: { name: async (cmd, signal, ctx) => replyFields }
// A later protocol (kad, gossipsub, bitswap) is one more entry here; peer.mjs and the fixtures stay.
import { publicKeyFromProtobuf } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { multiaddr } from '@multiformats/multiaddr'
import { ECHO_PROTOCOL, echoClient, echoHandler, served } from './echo.mjs'
import { gossipsubService } from './gossipsub.mjs'
import { kadService } from './kad.mjs'
import { heliaService } from './helia.mjs'

export const DEFAULT_SERVICES = ['identify', 'ping', 'echo']

export const SERVICES = {
  kad: kadService, // provide, find_providers, dht_peers (lib/kad.mjs); needs identify + ping
  gossipsub: gossipsubService, // subscribe, publish, received, topic_peers (lib/gossipsub.mjs)
  helia: heliaService, // a Helia node beside this one: helia_info, helia_add, helia_cat (lib/helia.mjs)
  identify: {
    libp2pServices: () => ({ identify: identify() }),
    commands: {
      // {"cmd":"identify","addr":MA} -> what the remote says about itself
      identify: async (c, signal, { node }) => {
        const conn = await node.dial(multiaddr(c.addr), { signal })
        const r = await node.services.identify.identify(conn, { signal })
        const hasKey = r.publicKey !== undefined && r.publicKey.length > 0
        // the peer id derived from the identified key must be the one we dialled
        const dialled = c.addr.includes('/p2p/') ? c.addr.split('/p2p/').pop() : conn.remotePeer.toString()
        const derived = hasKey ? peerIdFromPublicKey(publicKeyFromProtobuf(r.publicKey)).toString() : null
        return {
          peer_id: r.peerId.toString(),
          protocols: r.protocols,
          agent: r.agentVersion ?? null,
          protocol_version: r.protocolVersion ?? null,
          listen_addrs: r.listenAddrs.map(a => a.toString()),
          observed_addr: r.observedAddr?.toString() ?? null,
          has_public_key: hasKey,
          public_key_matches: derived !== null && derived === dialled
        }
      }
    }
  },
  ping: {
    libp2pServices: () => ({ ping: ping() }),
    commands: {
      // {"cmd":"ping","addr":MA,"count":N} -> {"rtt_ms": first, "rtts": [...]}
      ping: async (c, signal, { node }) => {
        const rtts = []
        for (let i = 0; i < (c.count ?? 1); i++) rtts.push(await node.services.ping.ping(multiaddr(c.addr), { signal }))
        return { rtt_ms: rtts[0], rtts }
      }
    }
  },
  echo: {
    setup: async ({ node }) => {
      await node.handle(ECHO_PROTOCOL, echoHandler, { maxInboundStreams: 64, maxOutboundStreams: 64 })
    },
    commands: {
      // {"cmd":"echo","addr":MA,"size":N[,"protocol":P]} -> {"sha256","sent_sha256","bytes","seconds"}
      echo: async (c, signal, { node }) => echoClient(node, multiaddr(c.addr), c.size ?? 0, { signal, protocol: c.protocol ?? ECHO_PROTOCOL }),
      // {"cmd":"served"} -> every echo stream this peer served: [{"peer_id","bytes","sha256","ok"}]
      served: async () => ({ served })
    }
  }
}
