"""The argument string of a config file: `--config=configs/x.py:<positional>[,key=value...]`."""


def parse(arg: str, *, usage: str, options: dict[str, tuple]) -> tuple[str, dict[str, str]]:
  """'ViT-B_16,aug=medium2,epochs=90' -> ('ViT-B_16', {'aug': 'medium2', 'epochs': '90'}).

  `options` maps each allowed key to its allowed values (an empty tuple allows any); a bad key or value is a
  ValueError that gives `usage` and what is valid.
  """
  first, *rest = [p.strip() for p in arg.split(',')]
  out = {}
  for part in rest:
    key, sep, value = part.partition('=')
    if not sep or key not in options:
      raise ValueError(f'Bad config argument {part!r} in {arg!r}; usage: {usage}; keys: {", ".join(options)}.')
    if options[key] and value not in options[key]:
      raise ValueError(f'Bad {key}={value!r} in {arg!r}; valid: {", ".join(map(str, options[key]))}.')
    out[key] = value
  return first, out
