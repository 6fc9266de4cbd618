"""What a trained dictionary's features mean: the feature database (``features.sqlite``), the
streaming analysis that fills it, logit effects, concept search, neighbourhoods, explanations."""
