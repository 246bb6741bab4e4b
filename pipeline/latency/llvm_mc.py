"""LLVM 19's tools, and A64 instruction words decoded to assembly text by its ``llvm-mc``.

:func:`find_tool` locates ``llvm-mc``/``llvm-mca`` of LLVM 19 (another version has
other scheduling models); :func:`disassemble_blocks` decodes the words of many
blocks in one ``llvm-mc`` process and checks the decoded encodings against the
words, so a word that llvm-mc skips cannot shift the others. The pricing of the
decoded blocks is :mod:`pipeline.latency.mca`.
"""

import bisect
import re
import shutil
import subprocess
import time
from typing import List, Optional, Sequence, Tuple

from pipeline.errors import ConfigError, DeviceOutputError, DeviceUnavailableError

LLVM_MAJOR = 19
DEBIAN_PACKAGE = f"llvm-{LLVM_MAJOR}"
TRIPLE = "aarch64"
_WORD_MAX = 0xFFFF_FFFF
_ENCODING = re.compile(r"//\s*encoding:\s*\[([^\]]*)\]")
#: Where an LLVM tool's message points into its standard input (1-based line).
SOURCE_LINE = re.compile(r"<stdin>:(\d+):\d+:")


def find_tool(name: str, search_path: Optional[str] = None) -> str:
    """The path of LLVM 19's ``name`` ("llvm-mca", "llvm-mc").

    ``name-19`` is preferred; a plain ``name`` is accepted only if its ``--version``
    says LLVM 19 (another version has other scheduling models).

    Args:
        name: the unversioned tool name.
        search_path: a PATH to search instead of the environment's.

    Raises:
        DeviceUnavailableError: no LLVM 19 build of the tool is found; the message
            names the Debian package and ``make system-deps``.
    """
    versioned = shutil.which(f"{name}-{LLVM_MAJOR}", path=search_path)
    if versioned:
        return versioned
    plain = shutil.which(name, path=search_path)
    if plain and f"LLVM version {LLVM_MAJOR}." in tool_version(plain):
        return plain
    found = f" (the {name} on PATH is not LLVM {LLVM_MAJOR})" if plain else ""
    raise DeviceUnavailableError(
        f"{name}-{LLVM_MAJOR} not found{found}: pricing blocks needs LLVM {LLVM_MAJOR}'s "
        f"pipeline models; install the Debian package {DEBIAN_PACKAGE} "
        f"(as root: make system-deps, or apt-get install {DEBIAN_PACKAGE})")


def tool_version(tool: str) -> str:
    """The ``--version`` text of the LLVM tool at ``tool`` (run each time)."""
    done = subprocess.run([tool, "--version"], capture_output=True, text=True)
    return done.stdout


def check_blocks(blocks: Sequence[Sequence[int]], addresses: Optional[Sequence[int]]) -> None:
    """Raises ConfigError unless every block is a non-empty list of 32-bit words."""
    if addresses is not None and len(addresses) != len(blocks):
        raise ConfigError(f"{len(addresses)} block addresses given for {len(blocks)} blocks")
    for i, words in enumerate(blocks):
        if len(words) == 0:
            raise ConfigError(f"block {block_name(i, addresses)} has no instruction words")
        bad = [w for w in words if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= _WORD_MAX]
        if bad:
            raise ConfigError(f"block {block_name(i, addresses)}: instruction words are integers in "
                              f"[0, 0xffffffff], got {bad[0]!r}")


def block_name(i: int, addresses: Optional[Sequence[int]]) -> str:
    """Block ``i`` as errors name it: its index, and its address when known."""
    return f"{i} at {addresses[i]:#x}" if addresses is not None else str(i)


def mattr_args(mattr: Sequence[str]) -> List[str]:
    """The ``-mattr=`` argument of an LLVM tool for ``mattr`` (none when empty)."""
    return [f"-mattr={','.join(mattr)}"] if mattr else []


def mattr_text(mattr: Sequence[str]) -> str:
    """``mattr`` as messages name it."""
    return f"-mattr={','.join(mattr)}" if mattr else "no -mattr"


def disassemble(words: Sequence[int], mattr: Sequence[str] = (), address: Optional[int] = None) -> List[str]:
    """The assembly text of one block's words, one instruction per word.

    Args:
        words: 32-bit A64 instruction words, in execution order.
        mattr: LLVM -mattr features the words may need ("+dotprod", "+fullfp16").
        address: the block's guest address, named in errors.

    Raises:
        ConfigError: a word is not a 32-bit integer, or no words are given.
        DeviceOutputError: a word does not decode with ``mattr`` (an invalid word,
            or one that needs a feature not in ``mattr``); the message names the
            word, the block and the -mattr.
        DeviceUnavailableError: llvm-mc-19 is not installed.
    """
    return disassemble_blocks([words], mattr, None if address is None else [address])[0]


def disassemble_blocks(blocks: Sequence[Sequence[int]], mattr: Sequence[str] = (),
                       addresses: Optional[Sequence[int]] = None) -> List[List[str]]:
    """:func:`disassemble` for many blocks in one llvm-mc process.

    All words go to llvm-mc one per input line; with ``--show-encoding`` each decoded
    instruction carries its bytes, which must repeat the words in order, so a word
    that llvm-mc skips (it only warns) cannot shift the others.

    Raises:
        as :func:`disassemble`.
    """
    check_blocks(blocks, addresses)
    texts, _ = disassemble_timed(blocks, tuple(mattr), addresses)
    return texts


def disassemble_timed(blocks: Sequence[Sequence[int]], mattr: Tuple[str, ...],
                      addresses: Optional[Sequence[int]]) -> Tuple[List[List[str]], float]:
    """The blocks' instruction texts and the seconds llvm-mc took."""
    words = [w for block in blocks for w in block]
    source = "".join(" ".join(f"0x{b:02x}" for b in w.to_bytes(4, "little")) + "\n" for w in words)
    command = [find_tool("llvm-mc"), "--disassemble", "--show-encoding", f"-triple={TRIPLE}", *mattr_args(mattr)]
    start = time.perf_counter()
    done = subprocess.run(command, input=source, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    where = _word_locator(blocks, addresses, mattr)
    problems = [line for line in done.stderr.splitlines() if line.strip()]
    if problems or done.returncode != 0:
        raise _mc_error(problems, done.returncode, where, mattr)
    insns = _decoded(done.stdout, words, where)
    texts, at = [], 0
    for block in blocks:
        texts.append(insns[at:at + len(block)])
        at += len(block)
    return texts, seconds


def _mc_error(problems: Sequence[str], returncode: int, where, mattr: Tuple[str, ...]) -> Exception:
    """The error for llvm-mc's stderr: llvm-mc only warns of a word it cannot decode, and skips it."""
    first = problems[0] if problems else f"exit {returncode}"
    if "not a recognized" in first:
        return ConfigError(f"llvm-mc does not know a feature of {mattr_text(mattr)}: {first}")
    at = SOURCE_LINE.match(first)
    if at:
        return DeviceOutputError(f"llvm-mc cannot decode {where(int(at.group(1)) - 1)}: "
                                 f"{first.split(': ', 2)[-1]} (not an A64 instruction, or one that needs a "
                                 f"feature missing from the -mattr, e.g. +dotprod for sdot)")
    return DeviceOutputError(f"llvm-mc failed with {mattr_text(mattr)}: {' | '.join(problems[:3]) or first}")


def _word_locator(blocks, addresses, mattr):
    """A function naming the n-th word of all blocks: its hex, block and -mattr."""
    starts, at = [], 0
    for block in blocks:
        starts.append(at)
        at += len(block)

    def where(n: int) -> str:
        i = bisect.bisect_right(starts, n) - 1
        return (f"word 0x{blocks[i][n - starts[i]]:08x} (instruction {n - starts[i]} of block "
                f"{block_name(i, addresses)}) with {mattr_text(mattr)}")
    return where


def _decoded(stdout: str, words: Sequence[int], where) -> List[str]:
    """The instruction texts of llvm-mc's output, checked word by word against ``words``."""
    insns = []
    for line in stdout.splitlines():
        found = _ENCODING.search(line)
        if not found:
            continue  # ".text", or a comment line such as "// =0xfffffffe"
        n = len(insns)
        encoded = bytes(int(b, 16) for b in found.group(1).split(","))
        if n >= len(words) or encoded != words[n].to_bytes(4, "little"):
            got = f"0x{int.from_bytes(encoded, 'little'):08x}"
            raise DeviceOutputError(f"llvm-mc decoded {got} where {where(min(n, len(words) - 1))} was expected")
        insns.append(line[:line.index("//")].strip())
    if len(insns) != len(words):
        raise DeviceOutputError(f"llvm-mc decoded {len(insns)} instructions of {len(words)} words; "
                                f"{where(len(insns))} is missing")
    return insns
