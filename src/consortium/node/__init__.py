"""A node composes identity, ledger, store, learner and protocol over a transport."""
