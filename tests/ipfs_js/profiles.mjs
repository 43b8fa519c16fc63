// The importer options of each UnixFS profile the store knows (src/consortium/store/unixfs.py).
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

export const OPTIONS = {
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

export function options (profile) {
  if (!(profile in OPTIONS)) throw new Error(`unknown profile ${profile}`)
  return { ...OPTIONS[profile] }
}
