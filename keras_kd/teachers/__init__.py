"""Teachers keras-kd did not train: a Keras model file (external.py) or a file of their outputs (outputs.py)."""
