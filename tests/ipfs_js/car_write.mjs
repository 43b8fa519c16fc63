// Import a file with the IPFS project's UnixFS importer and write its blocks as a CARv1 with
// @ipld/car, the file's CID its root. Usage: node car_write.mjs PROFILE FILE OUT.car; prints the CID.
import { createReadStream, createWriteStream } from 'node:fs'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { importer } from 'ipfs-unixfs-importer'
import { CarWriter } from '@ipld/car/writer'
import { options } from './profiles.mjs'

const [profile, file, out] = process.argv.slice(2)
const blocks = []
const blockstore = { put: async (cid, bytes) => { blocks.push([cid, bytes]); return cid } }
let root
for await (const entry of importer([{ content: createReadStream(file) }], blockstore, options(profile))) root = entry.cid
const { writer, out: stream } = CarWriter.create([root])
const done = pipeline(Readable.from(stream), createWriteStream(out))
for (const [cid, bytes] of blocks) await writer.put({ cid, bytes })
await writer.close()
await done
console.log(root.toString())
