"""Names inside a node (or run) folder, shared by the node that writes it and the auditor."""

LEDGER_FILE = "ledger.sqlite"
STORE_DIR = "store"
CHAIN_DIR = "chain"
STATUS_FILE = "status.json"
NODE_CONFIG_FILE = "node.toml"
CONSENT_FILE = "consent.sqlite"
LOCK_FILE = "node.lock"
