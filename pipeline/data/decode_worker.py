"""One decoding process of the image cache: ``python -m pipeline.data.decode_worker``.

:func:`pipeline.data.cache.decode_missing` starts one per core, with a fresh
interpreter each (not ``multiprocessing``: its ``spawn`` re-runs the caller's main
script, which breaks a user's script without a ``__main__`` guard, and ``fork``
after TensorFlow has started its threads can deadlock). The job comes as JSON on
stdin: ``{"tasks": [[[path, key], ...], ...], "shape": [h, w, c], "fit": ..., "directory": ...}``;
each finished task prints one line ``done N`` (N files). A cache write that fails
(disk full, permissions) prints ``error <reason>`` and exits with status 1, the
chunk it was writing removed.
"""

import json
import sys


def main() -> int:
    from pipeline.data.cache import decode_chunk

    job = json.loads(sys.stdin.read())
    shape = tuple(job["shape"])
    for task in job["tasks"]:
        try:
            count = decode_chunk([tuple(item) for item in task], shape, job["fit"], job["directory"])
        except OSError as exc:
            print(f"error {exc.strerror or exc}", flush=True)
            return 1
        print(f"done {count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
