// The CID the IPFS project's JavaScript importer gives each file, under a profile.
// Usage: node unixfs_cid.mjs PROFILE FILE...   (one CID per line, in order)
import { createReadStream } from 'node:fs'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const OPTIONS = {
  // kubo's default `ipfs add`, and IPIP-499's two named profiles
  'unixfs-v0-2015': { profile: 'unixfs-v0-2015' },
  'unixfs-v1-2025': { profile: 'unixfs-v1-2025' },
  // kubo's `ipfs add --cid-version 1`: CIDv1, raw leaves, 256 KiB chunks, 174 links
  'kubo-cid-v1': {
    cidVersion: 1,
    rawLeaves: true,
    chunker: fixedSize({ chunkSize: 262144 }),
    layout: balanced({ maxChildrenPerNode: 174 })
  }
}

// Names blocks without keeping them.
const discard = { put: async (cid) => cid, get: async () => { throw new Error('no get') }, has: async () => false }

const [profile, ...files] = process.argv.slice(2)
if (!(profile in OPTIONS)) throw new Error(`unknown profile ${profile}`)
for (const file of files) {
  let last
  for await (const entry of importer([{ content: createReadStream(file) }], discard, { ...OPTIONS[profile] })) last = entry
  console.log(last.cid.toString())
}
