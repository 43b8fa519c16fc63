"""Attacks that measure what a run leaks (`consortium audit privacy`).

- `membership`: membership inference (loss threshold, LiRA and RMIA offline) against every
  round's published model of a run folder, the folder's own node's records as ground truth;
- `mia`: the attacks' scores; `metrics`: ROC, AUC, TPR at low FPR, the limits an (ε, δ) sets;
- `views`: who sees what (leader, voter, outside auditor, colluders) given what is published.

Still to come (issue 17): a one-run ε lower bound from canaries, gradient inversion.
"""
