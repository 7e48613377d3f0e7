"""A stand-in for `gcloud` in tests: records each argv and answers from a scripted scenario.

Environment: FAKE_GCLOUD_LOG (a JSON line per call is appended: the argv after `gcloud`),
FAKE_GCLOUD_SCENARIO (a JSON list of [patterns, responses]: the first rule whose patterns are all
substrings of the joined argv answers with its next response, the last one repeating; a response is
{"rc", "stdout", "stderr", "sleep"}; no rule: exit 0 silently). Counters live next to the scenario
file. Like the real command, `compute tpus tpu-vm scp LOCAL ...` fails when LOCAL is not a file (a
scripted rule can still fail one that is).
"""

import fcntl
import json
import os
import sys
import time


def main() -> int:
  argv = sys.argv[1:]
  with open(os.environ['FAKE_GCLOUD_LOG'], 'a', encoding='utf-8') as f:
    f.write(json.dumps(argv) + '\n')
  if argv[:4] == ['compute', 'tpus', 'tpu-vm', 'scp'] and not os.path.isfile(argv[4]):
    sys.stderr.write(
      f'ERROR: (gcloud.compute.tpus.tpu-vm.scp) {argv[4]}: No such file or directory\n'
    )
    return 1
  path = os.environ.get('FAKE_GCLOUD_SCENARIO')
  if not path:
    return 0
  with open(path, encoding='utf-8') as f:
    rules = json.load(f)
  joined = ' '.join(argv)
  for index, (patterns, responses) in enumerate(rules):
    if all(p in joined for p in patterns):
      break
  else:
    return 0
  with open(path + '.state', 'a+', encoding='utf-8') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    counts = json.loads(f.read() or '{}')
    n = counts.get(str(index), 0)
    counts[str(index)] = n + 1
    f.seek(0)
    f.truncate()
    f.write(json.dumps(counts))
  response = responses[min(n, len(responses) - 1)]
  time.sleep(response.get('sleep', 0))
  sys.stdout.write(response.get('stdout', ''))
  sys.stderr.write(response.get('stderr', ''))
  return response.get('rc', 0)


if __name__ == '__main__':
  sys.exit(main())
