"""Asks a TFLite runtime which ops it registers, run by THAT runtime's Python.

Stand-alone on purpose, like ``guest_runner.py``: a host twin's environment has the
standard library, numpy and one TFLite runtime, never the ``pipeline`` package or
flatbuffers. The host side (``op_support.py``) builds the probe models with the
generated schema builder and writes them into a JSON request::

    python -I op_probe.py request.json > answer.json

request: ``{"module", "template", "offsets": {"deprecated", "builtin", "version"},
"codes": [builtin code, ...], "gap", "custom": {name: model}}`` (models in base64).
The template is a model whose operator code table holds one entry and no operator
uses it; its builtin code and version are patched in place at ``offsets``.

Why this answers the question: building an interpreter looks up every entry of the
operator code table in the op resolver (``FindOp(code, version)``), used or not, and
fails (``NOT_REGISTERED``) when the resolver has no registration.
So one construction per (code, version) asks the runtime's own resolver. Versions are
tried upwards from 1 until ``gap`` in a row fail past the highest that loads.
A custom op is looked up only when its node is prepared: an op the resolver lacks
fails with "unresolved custom op"; any other outcome (the kernel rejecting the empty
node) means the resolver has it.

answer: ``{"builtin": {code: [versions]}, "custom": {name: true|false}}``.
"""

import base64
import importlib
import json
import struct
import sys

PLACEHOLDER_FOR_GREATER_OP_CODES = 127
#: What an interpreter's construction says of a builtin code or version it has no
#: kernel for (a code newer than the runtime's schema gets the second).
NOT_REGISTERED = ("Didn't find op for builtin opcode", "Op builtin_code out of range")


def _interpreter(module):
    mod = importlib.import_module(module)
    resolver = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES

    def make(data):
        return mod.Interpreter(model_content=data, experimental_op_resolver_type=resolver)
    return make


def _loads(make, data):
    try:
        make(data)
        return True
    except (ValueError, RuntimeError) as exc:
        if any(m in str(exc) for m in NOT_REGISTERED):
            return False
        raise


def builtin_versions(make, template, offsets, code, gap):
    """The versions of builtin ``code`` that the resolver registers."""
    data = bytearray(template)
    struct.pack_into("<b", data, offsets["deprecated"], min(code, PLACEHOLDER_FOR_GREATER_OP_CODES))
    struct.pack_into("<i", data, offsets["builtin"], code)
    found, version, misses = [], 0, 0
    while misses < gap:
        version += 1
        struct.pack_into("<i", data, offsets["version"], version)
        if _loads(make, bytes(data)):
            found.append(version)
            misses = 0
        else:
            misses += 1
    return found


def has_custom(make, data):
    try:
        make(data).allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        return "unresolved custom op" not in str(exc)
    return True


def main():
    with open(sys.argv[1]) as f:
        req = json.load(f)
    make = _interpreter(req["module"])
    template = base64.b64decode(req["template"])
    builtin = {str(code): builtin_versions(make, template, req["offsets"], code, req["gap"])
               for code in req["codes"]}
    custom = {name: has_custom(make, base64.b64decode(model)) for name, model in req["custom"].items()}
    json.dump({"builtin": builtin, "custom": custom}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
