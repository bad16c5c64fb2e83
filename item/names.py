"""File names more than one stage reads: kept here so that a stage can find another stage's files
without importing that stage (featurize reads a trained head's config to rebuild its models)."""

#: A trained head's configuration (JSON) inside its folder; the weights file beside it is the head's own.
HEAD_CONFIG_FILE = "head.json"
