// Gossipsub service for the interop peer (@libp2p/gossipsub, StrictSign).
// IPColocationFactorWeight 0: every test peer is on 127.0.0.1 (see JS-PEER-NOTES.md).
import { gossipsub } from '@libp2p/gossipsub'

/** Messages received per topic: [{topic, data_b64, from, seqno, received_ms}] */
const received = []

function toB64 (bytes) {
  return Buffer.from(bytes).toString('base64')
}

export const gossipsubService = {
  libp2pServices: () => ({
    pubsub: gossipsub({
      scoreParams: { IPColocationFactorWeight: 0 },
      allowPublishToZeroTopicPeers: true,
      emitSelf: false,
      heartbeatInterval: 1000
    })
  }),
  setup: async ({ node }) => {
    node.services.pubsub.addEventListener('message', (evt) => {
      const m = evt.detail
      received.push({
        topic: m.topic,
        data_b64: toB64(m.data),
        from: m.from?.toString() ?? null,
        seqno: m.sequenceNumber?.toString() ?? null,
        received_ms: Date.now()
      })
    })
  },
  commands: {
    // {"cmd":"subscribe","topic":T} -> {}
    subscribe: async (c, signal, { node }) => {
      node.services.pubsub.subscribe(c.topic)
      return {}
    },
    // {"cmd":"publish","topic":T,"data_b64":B} -> {"recipients": n}
    publish: async (c, signal, { node }) => {
      const r = await node.services.pubsub.publish(c.topic, Buffer.from(c.data_b64, 'base64'))
      return { recipients: r.recipients.length }
    },
    // {"cmd":"received"[,"topic":T]} -> {"messages": [...]}
    received: async (c) => ({ messages: received.filter(m => c.topic === undefined || m.topic === c.topic) }),
    // {"cmd":"topic_peers","topic":T} -> {"subscribers": [peer ids], "mesh": [peer ids]}
    topic_peers: async (c, signal, { node }) => ({
      subscribers: node.services.pubsub.getSubscribers(c.topic).map(p => p.toString()),
      mesh: node.services.pubsub.getMeshPeers(c.topic)
    })
  }
}
