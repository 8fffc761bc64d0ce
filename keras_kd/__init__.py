"""keras-kd: knowledge distillation of face models (classification, alignment, verification)."""
__version__ = "0.1.0"
