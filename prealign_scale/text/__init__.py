"""Text in: tokenizer training and loading (`tokenizer`) and corpus reading and writing (`corpus`).

Below alignment/ and data/: both read corpora and tokenize dictionary words with these, and this package
imports nothing else of prealign_scale.
"""
