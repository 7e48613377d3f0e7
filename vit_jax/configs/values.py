"""The value rules of the config check (vit_jax/configs/check.py, and configs/evals.py for the
entries of config.evals): each appends one line to `problems` naming the field, its value and what
would be valid."""

import difflib
import math


def closest(value, valid) -> str:
  """' (did you mean X?)' naming the one of `valid` closest to `value`, or '' when none is close."""
  close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
  return f' (did you mean {close[0]!r}?)' if close else ''


def choice(problems, name, value, valid) -> None:
  """`value` of config.<name> must be one of `valid` (the closest one named for a typo)."""
  if value not in valid:
    listed = ', '.join(map(repr, valid))
    problems.append(f'config.{name}={value!r} is not one of {listed}{closest(value, valid)}.')


def number(
  problems, name, value, *, low=None, high=None, low_open=False, high_open=False, integer=False
) -> None:
  """`value` of config.<name> must be a number (an integer with `integer`) within the bounds."""
  kinds = (int,) if integer else (int, float)
  if (
    isinstance(value, bool)
    or not isinstance(value, kinds)
    or (isinstance(value, float) and math.isnan(value))
  ):
    problems.append(f'config.{name}={value!r} must be {"an integer" if integer else "a number"}.')
    return
  bad_low = low is not None and (value <= low if low_open else value < low)
  bad_high = high is not None and (value >= high if high_open else value > high)
  if bad_low or bad_high:
    lo = '' if low is None else f'{"(" if low_open else "["}{low}'
    hi = '' if high is None else f'{high}{")" if high_open else "]"}'
    if low is not None and high is not None:
      where = f'in {lo}, {hi}'
    elif low is not None:
      where = f'{">" if low_open else ">="} {low}'
    else:
      where = f'{"<" if high_open else "<="} {high}'
    problems.append(f'config.{name}={value!r} must be {where}.')
