"""The featurize stage's inputs: discovery of folders and manifests (``discover``), decoding (``decode``),
perturbations (``perturb``) and augmented copies (``augment``).

Nothing is re-exported here: import from the module that defines a name.
"""
