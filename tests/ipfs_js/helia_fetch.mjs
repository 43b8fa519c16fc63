// Fetch a file by CID from one trustless gateway with Helia's verified-fetch, which checks every
// block it receives against its CID. Helia runs over HTTP only (no libp2p, no delegated routing):
// the gateway given is its one source. Usage: node helia_fetch.mjs GATEWAY CID
// Prints "status S", "type T", "bytes N", "sha256 HEX".
import './node20.mjs'
import { createHash } from 'node:crypto'
import { createHeliaLight } from 'helia'
import { withHTTP } from '@helia/http'
import { createVerifiedFetch } from '@helia/verified-fetch'

const [gateway, cid] = process.argv.slice(2)
const helia = withHTTP(createHeliaLight({}), {
  delegatedRouters: [],
  recursiveGateways: [gateway],
  allowLocal: true, // the gateway is on 127.0.0.1, over http
  allowInsecure: true
})
// Helia 7.1's routing waits forever when every router is a fallback one (the gateway list is),
// so add an ordinary router that knows no provider: then it moves on to the gateway.
helia.addRouter({ name: 'none', async * findProviders () {} })
await helia.start()
const verifiedFetch = await createVerifiedFetch(helia)
const res = await verifiedFetch(`ipfs://${cid}`, { signal: AbortSignal.timeout(60000) })
const body = Buffer.from(await res.arrayBuffer())
console.log(`status ${res.status}`)
console.log(`type ${res.headers.get('content-type')}`)
console.log(`bytes ${body.length}`)
console.log(`sha256 ${createHash('sha256').update(body).digest('hex')}`)
await verifiedFetch.stop()
await helia.stop()
