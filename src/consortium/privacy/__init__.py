"""Differential privacy: record-level DP-SGD (Opacus), client-level distributed discrete Gaussian
noise under SecAgg+, accounting with dp-accounting, and per-purpose budgets on the ledger.

Modules: `config` (the [privacy] table), `accounting` (epsilon, calibration, per-round spend),
`noise` (discrete Gaussian sampler, per-node shares), `client_dp` (grid sensitivity, share size,
scale with headroom), `dpsgd` (train_local_dp), `budget` (tracker, record field, audit check).
"""
