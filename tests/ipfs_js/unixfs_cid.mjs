// The CID the IPFS project's JavaScript importer gives each file, under a profile.
// Usage: node unixfs_cid.mjs PROFILE FILE...   (one CID per line, in order)
import { createReadStream } from 'node:fs'
import { importer } from 'ipfs-unixfs-importer'
import { options } from './profiles.mjs'

// Names blocks without keeping them.
const discard = { put: async (cid) => cid }

const [profile, ...files] = process.argv.slice(2)
for (const file of files) {
  let last
  for await (const entry of importer([{ content: createReadStream(file) }], discard, options(profile))) last = entry
  console.log(last.cid.toString())
}
