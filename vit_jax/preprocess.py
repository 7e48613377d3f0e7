"""vision_transformer's `vit_jax.preprocess` import path: its LiT preprocessing, so code written for
the reference (its LiT notebook) runs unchanged, on NumPy and without TensorFlow:

  tokenizer = preprocess.get_tokenizer('bert')(vocab_path=..., max_len=16)   # a class, made so
  tokens = tokenizer(['a photo of a cat'])                  # int32 [1, 16]
  images = preprocess.PreprocessImages(size=224)(images)    # uint8 [H, W, 3] -> [n, 224, 224, 3]
  pp = preprocess.get_pp(tokenizer_name='bert', vocab_path=..., max_len=16, size=224)
  example = pp({'image': image, 'text': 'a photo of a cat'})   # image in [-1, 1], 'tokens' added

The tokenizers are vit_jax/data/tokenizers.py's, the image preprocessing and `get_pp`
vit_jax/data/preprocess.py's (whose docs say how each matches the reference). The reference's
TensorFlow graph ops (`preprocess_tf`) raise a NotImplementedError that says what to call instead.
"""

from vit_jax.data.preprocess import PreprocessImages, get_pp
from vit_jax.data.tokenizers import BertTokenizer, SentencepieceTokenizer, get_tokenizer

__all__ = ['BertTokenizer', 'PreprocessImages', 'SentencepieceTokenizer', 'get_pp', 'get_tokenizer']
