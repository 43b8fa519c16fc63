// Read a CAR with @ipld/car, as any IPFS tool would: check every block against its CID, then
// rebuild each named file with the IPFS project's UnixFS exporter from the CAR's blocks alone.
// Usage: node car_read.mjs CAR [CID...]
// Prints: "roots R1,R2", "blocks N", then "CID SHA256-OF-FILE" for each CID given.
import { createReadStream } from 'node:fs'
import { createHash } from 'node:crypto'
import { CarBlockIterator } from '@ipld/car/iterator'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { exporter } from 'ipfs-unixfs-exporter'

const key = (cid) => Buffer.from(cid.multihash.bytes).toString('hex')
const [car, ...wanted] = process.argv.slice(2)
const iterator = await CarBlockIterator.fromIterable(createReadStream(car))
const blocks = new Map()
for await (const { cid, bytes } of iterator) {
  if (cid.multihash.code !== sha256.code) throw new Error(`${cid}: not sha2-256`)
  const digest = await sha256.digest(bytes)
  if (Buffer.compare(Buffer.from(digest.digest), Buffer.from(cid.multihash.digest)) !== 0) {
    throw new Error(`${cid}: bytes do not match the CID`)
  }
  blocks.set(key(cid), bytes)
}
console.log(`roots ${(await iterator.getRoots()).map(String).join(',')}`)
console.log(`blocks ${blocks.size}`)
const blockstore = {
  get: (cid) => {
    const bytes = blocks.get(key(cid))
    if (bytes === undefined) throw new Error(`${cid} is not in the CAR`)
    return [bytes]
  }
}
for (const text of wanted) {
  const entry = await exporter(CID.parse(text), blockstore)
  const hash = createHash('sha256')
  for await (const chunk of entry.content()) hash.update(chunk)
  console.log(`${text} ${hash.digest('hex')}`)
}
