"""SCPNet: the method, its CLIP text prior and its label graph."""

from cpt.methods.scpnet.method import SCPNet, SCPNetConfig, class_thresholds, pseudo_labels, self_training_loss

__all__ = ["SCPNet", "SCPNetConfig", "class_thresholds", "pseudo_labels", "self_training_loss"]
