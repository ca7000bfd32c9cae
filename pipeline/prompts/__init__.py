"""Prompt sets: reading, validating, composing; their visual elements and lexicon."""
