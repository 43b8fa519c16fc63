// A trustless gateway on Helia: a Helia node (no network) whose blockstore holds FILE imported by
// the IPFS UnixFS importer under PROFILE, served over HTTP on 127.0.0.1 by Helia's verified-fetch,
// which answers `?format=raw` with a block and `?format=car` with a CAR it writes itself.
// Usage: node helia_gateway.mjs PROFILE FILE; prints "listening PORT CID", serves until killed.
import './node20.mjs'
import { createReadStream } from 'node:fs'
import { createServer } from 'node:http'
import { createHeliaLight } from 'helia'
import { createVerifiedFetch } from '@helia/verified-fetch'
import { importer } from 'ipfs-unixfs-importer'
import { options } from './profiles.mjs'

const [profile, file] = process.argv.slice(2)
const helia = createHeliaLight({})
await helia.start()
let root
for await (const entry of importer([{ content: createReadStream(file) }], helia.blockstore, options(profile))) root = entry.cid
const verifiedFetch = await createVerifiedFetch(helia)

const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://127.0.0.1')
    const match = url.pathname.match(/^\/ipfs\/([^/]+)$/)
    if (match === null) { res.writeHead(400); res.end('ask /ipfs/{cid}\n'); return }
    const answer = await verifiedFetch(`ipfs://${match[1]}${url.search}`, {
      headers: { accept: req.headers.accept ?? '' },
      offline: true, // this node's blockstore only: no session, no network
      session: false,
      signal: AbortSignal.timeout(10000)
    })
    res.writeHead(answer.status, Object.fromEntries(answer.headers))
    res.end(Buffer.from(await answer.arrayBuffer()))
  } catch (err) {
    res.writeHead(500)
    res.end(`${err}\n`)
  }
})
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port} ${root}`))
