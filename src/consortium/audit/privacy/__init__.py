"""Attacks that measure what a run leaks (`consortium audit privacy`).

- `membership`: membership inference (loss threshold, LiRA and RMIA offline) against every
  round's published model of a run folder, the folder's own node's records as ground truth;
- `mia`: the attacks' scores; `metrics`: ROC, AUC, TPR at low FPR, the limits an (ε, δ) sets;
- `views`: who sees what (leader, voter, outside auditor, colluders) given what is published;
- `inversion`: gradient inversion of the node's own records from its update as a plaintext
  leader, a SecAgg+ leader (the sum only) and with DP noise sees it (PSNR, SSIM, the images).
- `canaries` (with `one_run`, the bound, and `canary_task`): a one-run ε lower bound from a
  separate canary run with the audited run's configuration (Steinke, Nasr, Jagielski 2023).
"""
