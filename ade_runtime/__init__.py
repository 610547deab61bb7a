"""ADE runtime: formats, predictors and the adaptive editing loop.

The runtime is the core of ADE and needs only torch, safetensors, numpy and pillow
(plus a backbone's own library). It never imports the training stack (`ade_train`,
Lightning, W&B, scikit-learn).
"""

__version__ = "0.1.0"
