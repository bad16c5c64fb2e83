"""Former home of the featurize run, split by role; these names stay importable from here.

config (FeaturizeConfig), loading (models and store identity), loader (decoding), steps (the per-batch
model steps), planning (ids, dedup, resume), run (the run loop and the public entry points).
"""

from item.featurize.config import STAGES, FeaturizeConfig  # noqa: F401
from item.featurize.loader import Item, iter_decoded  # noqa: F401
from item.featurize.loading import (NOUNS_VERSION, Models, any_random_weights, compat_for,  # noqa: F401
                                    load_models, models_info, resolve_device)
from item.featurize.planning import hash_inputs, plan, seed_from_store  # noqa: F401
from item.featurize.run import RunSummary, featurize_images, featurize_rows  # noqa: F401
from item.featurize.steps import NON_FINITE, Featurizer  # noqa: F401
