"""Knowledge distillation: a frozen teacher (ANN or SNN) guides the student's training.

``teacher`` (its sources, freezing, caching), ``losses`` (softened KL, window and feature
losses), ``base`` (the fields and loss mixing every method shares) and one file per method:
``kl_kd`` (Takuya et al.), ``spike_kd`` (Kushawaha et al.), ``kdsnn`` (Xu et al.) and
``bntt_kd`` (Tran et al.).
"""
