// Kademlia DHT service for the interop peer (@libp2p/kad-dht, server mode, loopback only).
// passthroughMapper: the default mapper strips loopback addresses (see JS-PEER-NOTES.md).
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { CID } from 'multiformats/cid'

export const kadService = {
  libp2pServices: () => ({
    dht: kadDHT({
      protocol: '/ipfs/kad/1.0.0',
      clientMode: false,
      peerInfoMapper: passthroughMapper
    })
  }),
  commands: {
    // {"cmd":"provide","cid":C} -> {}
    provide: async (c, signal, { node }) => {
      await node.contentRouting.provide(CID.parse(c.cid), { signal })
      return {}
    },
    // {"cmd":"find_providers","cid":C[,"count":N]} -> {"providers":[{"peer_id","addrs"}]} (deduplicated)
    find_providers: async (c, signal, { node }) => {
      const found = new Map()
      for await (const p of node.contentRouting.findProviders(CID.parse(c.cid), { signal })) {
        const id = p.id.toString()
        if (!found.has(id)) found.set(id, { peer_id: id, addrs: p.multiaddrs.map(a => a.toString()) })
        if (found.size >= (c.count ?? 1)) break
      }
      return { providers: [...found.values()] }
    },
    // {"cmd":"dht_peers"} -> {"peers":[PeerId...]} (routing table)
    dht_peers: async (c, signal, { node }) => {
      const table = node.services.dht.routingTable
      return { peers: [...(table.kb?.toIterable() ?? [])].map(p => p.peerId.toString()), size: table.size }
    }
  }
}
