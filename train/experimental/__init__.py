"""Probes and experiments on top of the trainer: ``probe`` (attentive probing of a frozen encoder),
``codec_vs_frames`` (codec tokens against uniform frames, end to end).

Fenced off on purpose: the trainer core never imports this package, so what an experiment needs
(a k-means from curate, matplotlib, scipy) never becomes a dependency of training or release.
"""
