"""Input: global positions -> batches; sources, preprocessing, captions, tokenizers, TFDS
builders."""
