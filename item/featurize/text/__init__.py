"""The featurize stage's text side: nouns from captions (``nouns``, with its lexicon
``nouns_lexicon.txt``) and caption clean-up (``captions``: what CLIP encodes of a BLIP caption).

Nothing is re-exported here: import from the module that defines a name.
"""
